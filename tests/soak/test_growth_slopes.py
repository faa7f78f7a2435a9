"""The soak's growth verdicts (tests/soak/sampler.py) on made-up samples: growth within a
process's life is found, a restart's drop or warm-up is not taken for growth or shrinkage,
and a wobble is not a leak. Runs anywhere (no stack)."""
from tests.soak.sampler import flags, slopes, within_segment_slope


def samples(role, values, pid_at=lambda i: 100, every=10.0, metric="fds"):
    return [{"t": i * every, "role": role, "pids": [pid_at(i)], metric: v} for i, v in enumerate(values)]


def test_a_steady_leak_is_found_and_its_slope_is_per_minute():
    # 1 descriptor every 10 s: 6 per minute.
    result = slopes(samples("web-workers", [20 + i for i in range(60)]), warmup_seconds=0)
    assert abs(result["web-workers"]["fds"] - 6.0) < 1e-9
    assert flags(result) == ["web-workers: fds grows 6.00 fds/min (bound 0.5 fds/min), level up 48"]


def test_a_restart_is_a_new_segment_not_a_drop_or_a_climb():
    # Flat at 300 MB, restarted by a fault at sample 30 (new pid, lower level): no slope.
    values = [300_000] * 30 + [100_000] * 30
    result = slopes(samples("worker-1", values, pid_at=lambda i: 100 if i < 30 else 200, metric="rss_kb"), 0)
    assert result["worker-1"]["restarts"] == 1
    assert result["worker-1"]["rss_kb"] == 0
    # Pooled naively, the same points would read as shrinking memory.
    assert within_segment_slope([(i * 10.0, v, 0) for i, v in enumerate(values)])[0] < -1000


def test_warm_up_of_each_segment_is_left_out():
    # Each life climbs for its first 60 s (imports, pools), then is flat.
    life = [50 + min(i, 6) * 10 for i in range(30)]
    result = slopes(samples("supervisor-1", life + life, pid_at=lambda i: 1 if i < 30 else 2, metric="rss_kb"),
                    warmup_seconds=60)
    assert result["supervisor-1"]["rss_kb"] == 0 and not flags(result)
    assert slopes(samples("supervisor-1", life, metric="rss_kb"), warmup_seconds=0)["supervisor-1"]["rss_kb"] > 0


def test_a_wobble_with_a_steep_short_slope_is_not_flagged():
    # 16-18 descriptors over 3 minutes: a slope above the bound, but the level barely moved.
    result = slopes(samples("redis", [16, 16, 17, 16, 17, 17, 18, 17, 18, 18]), warmup_seconds=0)
    assert result["redis"]["fds"] > 0.5
    assert flags(result) == []


def test_a_restarted_worker_climbing_back_to_its_peers_level_is_a_refill_not_growth():
    # worker-1 restarted early by a fault: its new process fills its pools as jobs reach it,
    # 7 -> 12 descriptors after its warm-up, the level worker-2 held all along (soak seed 772020327).
    refill = [7, 7, 8, 8, 9, 10, 10, 11, 12, 12, 12]

    def worker_1(values):  # two samples of the first life, two of the second's warm-up, then `values`
        return samples("worker-1", [12, 12, 5, 6] + values, pid_at=lambda i: 1 if i < 2 else 2)

    worker_2 = samples("worker-2", [12] * 15, pid_at=lambda i: 3)
    result = slopes(worker_1(refill) + worker_2, warmup_seconds=15)
    entry = result["worker-1"]
    assert entry["restarts"] == 1 and entry["fds"] > 0.5 and entry["fds_rise"] >= 5  # a climb by the numbers
    assert flags(result) == []
    # Past its peer's level it is growth.
    leak = slopes(worker_1([v + 6 for v in refill]) + worker_2, warmup_seconds=15)
    assert [f.split(":")[0] for f in flags(leak)] == ["worker-1"]
    # So is the same climb in a process that was never restarted.
    unrestarted = slopes(samples("worker-1", refill) + worker_2, warmup_seconds=0)
    assert [f.split(":")[0] for f in flags(unrestarted)] == ["worker-1"]
