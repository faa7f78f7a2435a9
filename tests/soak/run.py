"""One soak: the chaos stack (tests/chaos/harness.py) under continuous load (load.py) for a
duration, a random fault from the chaos catalogue every 30-90 s, per-process resources
sampled every 10 s (sampler.py); afterwards the invariants, the accounting of every
webhook and outbox event, and the growth slopes. docs/RELIABILITY.md, "Soak"."""
import json
import os
import random
import time
import traceback
from types import SimpleNamespace

from tests.chaos.harness import ACTIVE, Stack
from tests.chaos.invariants import ActiveRunSampler, check_all, rate_limit_kept, rate_violations, slots_once
from tests.chaos.pgcluster import unavailable_reason
from tests.chaos.runner import in_ci
from tests.chaos.scenarios import PARTITION, SCENARIOS, SETTLE_TIMEOUT, connections
from tests.support import wait_for

from .load import LOAD_CONNECTIONS, NOT_DISPATCHED, Load, load_connections, warm_pools
from .sampler import MIN_RISE, ROLE_THRESHOLDS, THRESHOLDS, ProcessSampler, flags, slopes, slopes_table

# clock_jump moves the supervisors' clock 2-30 min ahead and back: by design no slot fires
# twice, so every every:1 schedule stays silent until real time catches up with the slot the
# jump took (up to 30 min), which would stop the soak's schedule load for that long.
EXCLUDED = {"clock_jump": "stops every every:1 schedule of the load for up to 30 min (the slot taken on the "
                          "jumped clock is not fired again when it jumps back, by design)",
            # The partitions need the chaos suite's third stack, whose workers and web server run
            # on network hosts of their own (tests/chaos/netns.py); the soak's stack has none.
            **{name: "needs the network hosts of the partition stack (tests/chaos/netns.py), which the "
                     "soak's stack does not run" for name in sorted(PARTITION)}}
FAULTS = [name for name in SCENARIOS if name not in EXCLUDED]
# duplicate_webhooks counts every delivery stored while it runs: the webhook stream pauses
# for it (the other streams go on).
QUIET = {"duplicate_webhooks": ("webhooks",)}
FAULT_GAP = (30.0, 90.0)  # seconds from one fault's start to the next
SETTLE = SETTLE_TIMEOUT * 2  # after the load stops: every run must have ended by then


def run_soak(seconds, seed, log=print, sample_interval=10.0, warmup=None, output_dir=None):
    """Returns the result dict (see report())."""
    rng = random.Random(seed)
    missing = unavailable_reason()
    if missing and in_ci():
        raise RuntimeError(f"CI must restart a real PostgreSQL server in database_restart, but no throwaway "
                           f"cluster can be made: {missing}")
    warmup = warmup if warmup is not None else min(300.0, max(45.0, seconds / 12))
    stack = Stack(own_cluster=not missing)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    t0 = time.monotonic()
    stack.start(lambda s: connections(s) + load_connections())
    log(f"soak: seed {seed}, {seconds:.0f} s of load, stack up in {time.monotonic() - t0:.0f} s "
        f"({'own cluster' if not missing else 'shared server: ' + missing}); logs in {stack.workdir}")
    result = {"seed": seed, "started": started_at, "seconds": seconds, "faults": [], "violations": [],
              "excluded": EXCLUDED,
              "thresholds": {"bounds": THRESHOLDS, "per role": ROLE_THRESHOLDS, "and a level rise of": MIN_RISE}, "warmup_seconds": warmup,
              "database": "own throwaway cluster (real restarts)" if not missing else f"shared server ({missing})"}
    result["warm_up_answers"] = warm_pools(stack)
    sampler = ProcessSampler(stack, interval=sample_interval).start()
    load = Load(stack, random.Random(rng.randrange(2**32))).start()
    whole = ActiveRunSampler(stack)
    whole.__enter__()
    fault_rng = random.Random(rng.randrange(2**32))
    try:
        deadline = time.monotonic() + seconds
        next_fault = time.monotonic() + fault_rng.uniform(10, 30)  # the first one early: a 3-min run gets 2-3
        last_minute = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_fault and deadline - now > 20:
                name = fault_rng.choice(FAULTS)
                result["faults"].append(_one_fault(stack, load, whole, name, fault_rng.randrange(2**32), log,
                                                   time.monotonic() - load.started))
                next_fault = max(next_fault + fault_rng.uniform(*FAULT_GAP), time.monotonic() + 5)
            minute = int((time.monotonic() - load.started) // 60)
            if minute > last_minute:
                last_minute = minute
                log(f"  {minute} min: {len(result['faults'])} faults, {_load_line(load)}")
            time.sleep(0.5)
        result["load_seconds"] = time.monotonic() - load.started
        load.stop()
        result["violations"] += _settle(stack, log)
        whole.__exit__(None, None, None)
        result["violations"] += [f"two active runs at once: {d}" for d in whole.doubles[:5]]
        result["violations"] += slots_once(stack) + rate_limit_kept(stack, whole.rate_before)
        load_violations, accounted = load.check()
        result["violations"] += load_violations
        result["accounted"] = accounted
        result["load"] = load.counts()
        result["runs"] = _run_counts(stack)
        result["violations"] += _schedule_kept(result, stack)
    except Exception:
        result["violations"].append(f"the soak raised:\n{traceback.format_exc()}")
    finally:
        whole._stop.set()
        sampler.stop()
        result["samples"] = sampler.samples
        result["sampler_errors"] = sampler.errors
        result["slopes"] = slopes(sampler.samples, warmup)
        result["growth"] = flags(result["slopes"])
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, "soak.json"), "w") as f:
                json.dump(result, f, indent=1, default=str)
            with open(os.path.join(output_dir, "soak.md"), "w") as f:
                f.write(report(result) + "\n")
        stack.stop()
    return result


def _one_fault(stack, load, whole, name, seed, log, at):
    started = time.monotonic()
    quiet = QUIET.get(name, ())
    for stream in quiet:
        load.quiet[stream].set()
    window = SimpleNamespace(rate_before=rate_violations(stack), doubles=[])
    doubles_before = len(whole.doubles)
    try:
        try:
            outcome = SCENARIOS[name](stack, random.Random(seed))
        except Exception:
            outcome = {"faults": 0, "violations": [f"scenario raised:\n{traceback.format_exc()}"]}
        window.doubles = whole.doubles[doubles_before:]
        violations = check_all(stack, window, outcome)
    finally:
        for stream in quiet:
            load.quiet[stream].clear()
    entry = {"scenario": name, "seed": seed, "at": round(at), "faults": outcome.get("faults", 0),
             "seconds": round(time.monotonic() - started, 1), "violations": violations,
             "note": outcome.get("note"), "detail": outcome.get("detail")}
    log(f"  fault {name} (seed {seed}) at {at / 60:.1f} min: {entry['faults']} faults, {len(violations)} violations, "
        f"{entry['seconds']}s" + "".join(f"\n      {v[:400]}" for v in violations))
    return entry


def _load_line(load):
    return (f"{len(load.webhooks)} webhooks, {sum(map(len, load.effects.values()))} events, "
            f"{sum(load.api_triggers.values())} API + {sum(load.cli_triggers.values())} CLI triggers")


def _settle(stack, log):
    """Stop the schedules (as an operator disabling the connections: enabled off, no next slot),
    then every stored webhook must be dispatched and every run must end within SETTLE (a
    delivery stored in the last seconds of the load becomes a record run only when a
    dispatcher takes it: "no run active" before that would be a moment, not the end)."""
    with stack.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE connections SET enabled = false, next_run_at = NULL WHERE schedule <> 'manual'")
    started = time.monotonic()
    placeholders = ", ".join(f"'{outcome}'" for outcome in NOT_DISPATCHED)

    def settled():
        return not stack.query(f"SELECT 1 FROM webhook_deliveries WHERE outcome IN ({placeholders}) LIMIT 1") \
            and not stack.query("SELECT 1 FROM runs WHERE status IN ('waiting', 'queued', 'running') LIMIT 1")
    try:
        wait_for(settled, timeout=SETTLE, interval=0.5, message="every webhook dispatched and no run active")
    except AssertionError:
        stuck = stack.query("SELECT r.id, c.name, r.status, r.trigger, r.attempt, r.created_at FROM runs r "
                            "JOIN connections c ON c.id = r.connection_id WHERE r.status IN "
                            "('waiting', 'queued', 'running') ORDER BY r.id LIMIT 5")
        return [f"deliveries undispatched or runs still active {SETTLE:.0f} s after the load stopped: "
                f"{[dict(r) for r in stuck]}"]
    log(f"  settled: every webhook dispatched, no run active {time.monotonic() - started:.0f} s after the load stopped")
    return []


def _run_counts(stack):
    rows = stack.query("SELECT CASE WHEN c.name LIKE 'load-%' THEN 'load-NN' ELSE c.name END AS conn, r.trigger, "
                       "r.status, count(*) AS n FROM runs r JOIN connections c ON c.id = r.connection_id "
                       "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    return [dict(r) for r in rows]


def _schedule_kept(result, stack):
    """Every load connection's schedule fired about once a minute (a slot whose previous run is
    still active coalesces, so fewer is allowed, not far fewer), and no run of a load
    connection failed: a sandbox sync fails only on a bug."""
    violations = []
    per = stack.query("SELECT c.name, count(r.id) AS n FROM connections c LEFT JOIN runs r ON r.connection_id = c.id "
                      "AND r.trigger = 'schedule' WHERE c.name LIKE 'load-%' GROUP BY c.name")
    minutes = result["load_seconds"] / 60
    counts = sorted(r["n"] for r in per)
    result["schedule_runs_per_connection"] = {"connections": len(counts), "min": counts[0], "max": counts[-1],
                                              "minutes": round(minutes, 1)}
    if len(counts) != LOAD_CONNECTIONS or counts[0] < max(1, int(minutes * 0.5) - 1):
        violations.append(f"schedules fired {counts[0]}-{counts[-1]} times in {minutes:.1f} min")
    failed = [r for r in result["runs"] if r["conn"] in ("load-NN", "stream-hooks") and r["status"] not in
              ("completed",) and r["status"] not in ACTIVE]
    if failed:
        violations.append(f"load runs that did not complete: {failed}")
    return violations


def report(result):
    faults = {}
    for f in result["faults"]:
        entry = faults.setdefault(f["scenario"], {"n": 0, "injected": 0, "violations": 0})
        entry["n"] += 1
        entry["injected"] += f["faults"]
        entry["violations"] += len(f["violations"])
    lines = [f"soak: seed {result['seed']}, started {result['started']}, load for "
             f"{result.get('load_seconds', 0) / 60:.1f} min; database: {result['database']}", "",
             "| fault scenario | times drawn | faults injected | invariant violations |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {e['n']} | {e['injected']} | {e['violations']} |" for name, e in sorted(faults.items())]
    lines += ["", f"load: {json.dumps(result.get('load'), default=str)}",
              f"accounted: {json.dumps(result.get('accounted'), default=str)}",
              f"schedule runs per load connection: {result.get('schedule_runs_per_connection')}",
              "runs: " + ", ".join(f"{r['conn']}/{r['trigger']}/{r['status']}={r['n']}" for r in result.get("runs", [])),
              "", f"slopes after {result['warmup_seconds']:.0f} s warm-up per process (sampler errors: "
                  f"{result.get('sampler_errors')}):", "", slopes_table(result["slopes"]), "",
              f"growth beyond the bounds {result['thresholds']}: {result['growth'] or 'none'}",
              f"invariant violations outside the faults: {len(result['violations'])}"]
    lines += [f"  {v[:600]}" for v in result["violations"]]
    lines += [f"  {f['scenario']} at {f['at']} s: {v[:600]}" for f in result["faults"] for v in f["violations"]]
    return "\n".join(lines)


def all_violations(result):
    return list(result["violations"]) + [f"{f['scenario']} at {f['at']} s: {v}" for f in result["faults"]
                                         for v in f["violations"]]
