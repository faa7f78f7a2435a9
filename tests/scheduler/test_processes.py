"""Two real `python -m scheduler` processes, one database, one Redis, a simulated hour."""
import os
import signal
import time
from datetime import timedelta

from sqlalchemy import select

from scheduler.leader import holder
from tests.conftest import one_backend
from tests.support import wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import QUEUED, Run, SupervisorState, utcnow
from webapp.queue import LOW, queue

pytestmark = one_backend

TICK, TTL = 0.05, 1.0
SETTINGS = dict(
    SUPERVISOR_TICK_SECONDS=TICK,
    LEADER_TTL_SECONDS=TTL,
    # Sweeps, alerts, retention and the outbox drain stay out of the way: this test is about slots.
    SWEEP_INTERVAL_SECONDS=3600,
    ALERT_INTERVAL_SECONDS=3600,
    RETENTION_INTERVAL_SECONDS=3600,
    OUTBOX_DRAIN_INTERVAL_SECONDS=0,
)
STEP = timedelta(seconds=150)  # every 2.5 simulated minutes: on every slot, and between them


def _set_clock(path, moment):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(moment.isoformat())
    os.replace(tmp, path)  # readers never see a half-written file


def _ticked(name, moment, leading=None):
    db.session.expire_all()
    row = db.session.get(SupervisorState, name)
    db.session.rollback()
    return row is not None and row.last_tick_at >= moment and (leading is None or row.is_leader == leading)


def _leader_done_with(moment):
    """Some supervisor finished a tick for `moment` while leading (heartbeat is written last)."""
    db.session.expire_all()
    found = db.session.execute(select(SupervisorState.name).where(
        SupervisorState.is_leader.is_(True), SupervisorState.last_tick_at >= moment)).first()
    db.session.rollback()
    return found is not None


def _finish_queued_runs():
    """Stand in for the workers, so the next slot is not skipped behind an active run."""
    for run_id in db.session.execute(select(Run.id).where(Run.status == QUEUED)).scalars().all():
        runs.cancel(run_id, requested_by="test")


def _slots(name):
    conn = runs.get_connection(name)
    requested = db.session.execute(select(Run.requested_by).where(Run.connection_id == conn.id)).scalars().all()
    return sorted(r.split("slot ")[1].rstrip(")") for r in requested)


def _iso(moment):
    return moment.isoformat(timespec="minutes") + "Z"


def test_two_supervisors_enqueue_each_slot_exactly_once_over_a_simulated_hour_and_survive_a_leader_sigkill(
        app, make_connection, supervisors, redis, tmp_path):
    t0 = utcnow().replace(minute=0, second=0, microsecond=0)
    clock = str(tmp_path / "clock")
    _set_clock(clock, t0)
    for name, schedule in (("five", "every:5"), ("hourly", "hourly:0"), ("quarter", "cron:*/15 * * * *")):
        make_connection(name=name, schedule=schedule)
    manual = make_connection(name="manual", schedule="manual")
    manual.next_run_at = t0 - timedelta(hours=1)  # a stale next run time must not tempt anyone
    db.session.commit()

    both = [supervisors.start(name=name, clock_file=clock, **SETTINGS) for name in ("sup-a", "sup-b")]
    wait_for(lambda: holder(redis) in ("sup-a", "sup-b") and all(_ticked(p.name, t0) for p in both),
             timeout=60, message="both supervisors up, one leading")
    leader, follower = sorted(both, key=lambda p: p.name != holder(redis))
    assert _ticked(leader.name, t0, leading=True) and _ticked(follower.name, t0, leading=False)

    takeover = None
    for k in range(1, 25):
        now = t0 + k * STEP
        _set_clock(clock, now)
        if now == t0 + timedelta(minutes=30):
            # Kill the leader while it may be in the middle of firing the :30 slots.
            leader.kill(signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: holder(redis) == follower.name, timeout=TTL + 10, interval=0.01, message="the takeover")
            takeover = time.monotonic() - killed
        wait_for(lambda: _leader_done_with(now), timeout=30, interval=0.02, message=f"a leader's tick at {now}")
        _finish_queued_runs()

    # The other supervisor leads within the configured bound (TTL + one tick; plus scheduling slack).
    assert takeover is not None and takeover <= TTL + TICK + 0.5, takeover
    minute = timedelta(minutes=1)
    assert _slots("five") == [_iso(t0 + 5 * i * minute) for i in range(1, 13)]
    assert _slots("quarter") == [_iso(t0 + 15 * i * minute) for i in range(1, 5)]
    assert _slots("hourly") == [_iso(t0 + 60 * minute)]
    assert _slots("manual") == []
    assert runs.get_connection("manual").next_run_at is None
    # Each run was handed to RQ once, on the low-priority queue.
    job_ids = queue(LOW).get_job_ids()
    assert len(job_ids) == len(set(job_ids)) == 17
    assert sorted(job_ids) == sorted(db.session.execute(select(Run.rq_job_id)).scalars().all())
    assert "promoted to leader" in follower.output()

    # SIGTERM: the tick finishes, leadership is released at once instead of expiring.
    follower.kill(signal.SIGTERM)
    assert follower.wait(timeout=15) == 0
    assert holder(redis) is None
    assert not _ticked(follower.name, t0, leading=True)
    assert "released leadership" in follower.output()
