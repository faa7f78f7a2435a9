"""Waiting runs with real worker and supervisor processes: a run deferred by a provider's
long rate limit resumes exactly once when the supervisors' clock passes its time, and a
failed attempt pauses for the retry policy's delay before the next one."""
import os
from datetime import timedelta

from sqlalchemy import func, select

from tests.conftest import one_backend
from tests.support import wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, WAITING, Record, Run, RunEvent, utcnow

pytestmark = one_backend

# Only the steps under test run often; the others stay out of the way.
QUIET = dict(SWEEP_INTERVAL_SECONDS=3600, ALERT_INTERVAL_SECONDS=3600, RETENTION_INTERVAL_SECONDS=3600,
             OUTBOX_DRAIN_INTERVAL_SECONDS=0)


def _set_clock(path, moment):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(moment.isoformat())
    os.replace(tmp, path)


def _run(run_id):
    db.session.expire_all()
    row = db.session.get(Run, run_id)
    db.session.rollback()
    return row


def _events(run_id, like):
    rows = db.session.execute(select(RunEvent.message, RunEvent.created_at).where(
        RunEvent.run_id == run_id, RunEvent.message.like(like)).order_by(RunEvent.id)).all()
    db.session.rollback()
    return rows


def test_a_long_retry_after_defers_the_run_without_spending_an_attempt_and_two_supervisors_resume_it_once(
        app, make_connection, workers, supervisors, tmp_path):
    conn = make_connection(settings={"records": 300, "page_size": 50, "retry_after_s": 3600,
                                     "retry_after_offset": 100})
    workers.start()
    before = utcnow()
    run = runs.trigger(conn, trigger="api").run
    wait_for(lambda: _run(run.id).status == WAITING, timeout=60, message="the run to wait for the rate limit")
    waiting = _run(run.id)
    assert waiting.attempt == 0 and waiting.deferrals == 1  # the attempt was given back
    assert before + timedelta(seconds=3590) <= waiting.not_before <= utcnow() + timedelta(seconds=3610)
    assert waiting.processed == 100  # the pages before the 429 are kept: it resumes from its checkpoint
    reason = runs.waiting_reason(waiting)
    assert reason.startswith("waiting for Sandbox's rate limit until ") and "UTC" in reason

    clock = str(tmp_path / "clock")
    _set_clock(clock, utcnow())
    both = [supervisors.start(name=name, clock_file=clock, SUPERVISOR_TICK_SECONDS=0.05, **QUIET)
            for name in ("sup-a", "sup-b")]
    _set_clock(clock, waiting.not_before + timedelta(seconds=1))
    wait_for(lambda: _run(run.id).status == COMPLETED, timeout=60, message="the deferred run to resume and complete")

    done = _run(run.id)
    assert done.attempt == 1 and done.deferrals == 1 and done.not_before is None
    assert done.counters["seen"] == 300
    assert db.session.scalar(select(func.count()).select_from(Record).where(Record.connection_id == conn.id)) == 300
    # Exactly once: one promotion, two starts of attempt 1 (before and after the wait), whatever
    # number of supervisors watched it.
    assert len(_events(run.id, "queued: its wait is over")) == 1
    assert len(_events(run.id, "attempt 1 started%")) == 2
    assert all(p.proc.poll() is None for p in both)


def test_a_failed_attempt_waits_the_retry_policys_pause_before_the_next_one(
        app, make_connection, workers, supervisors):
    base = 2.0
    conn = make_connection(settings={"records": 200, "page_size": 50, "fail_at_offset": 100})
    workers.start(env={"SYNCHUB_RUN_RETRY_BASE_SECONDS": base, "SYNCHUB_RUN_RETRY_MAX_SECONDS": 3.0})
    supervisors.start(name="sup", SUPERVISOR_TICK_SECONDS=0.05, **QUIET)
    run = runs.trigger(conn, trigger="api").run
    pauses = []
    wait_for(lambda: _run(run.id).status == WAITING, timeout=60, message="the pause after attempt 1")
    pauses.append(_run(run.id).not_before)
    wait_for(lambda: _run(run.id).status == FAILED, timeout=60, message="the run to use up its attempts")
    failures = _events(run.id, "attempt % failed%")
    starts = _events(run.id, "attempt % started%")
    assert [m.split(" ")[1] for m, _ in starts] == ["1", "2", "3"]
    for n in (0, 1):
        failed_at, next_started_at = failures[n][1], starts[n + 1][1]
        floor = min(3.0, base * 3 ** n) * 0.8  # the policy's delay, less its jitter
        assert (next_started_at - failed_at).total_seconds() >= floor - 0.05, (n, failed_at, next_started_at)
    assert pauses[0] >= failures[0][1] + timedelta(seconds=base * 0.8 - 0.05)
    assert "gave up after 3 attempts" in _run(run.id).error_message
