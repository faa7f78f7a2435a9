"""The job table's rules: one active run, conditional transitions, cancel, sweep."""
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.support import TAKES_WEBHOOKS, race_in_processes, wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Run, RunEvent, utcnow
from worker.engine import Heartbeat


def _heartbeat_finds_the_run_taken(app, run_id, attempt):
    """The worker's heartbeat thread (worker/engine.py) of a worker that still believes it
    runs `attempt`: it stops, with `lost` set, at its first beat once the run is not its own."""
    beat = Heartbeat(app, run_id, attempt, interval=0.01)
    beat.start()
    try:
        wait_for(lambda: beat.lost, timeout=10, message="the heartbeat to find its run taken")
    finally:
        beat.stop()
    return beat.lost


def test_a_trigger_with_the_active_runs_parameters_returns_it(app, make_connection):
    conn = make_connection()
    first = runs.trigger(conn, enqueue=False)
    # Other trigger, same sync (an empty parameter is no parameter): the active run serves it.
    second = runs.trigger(conn, params={"since": ""}, trigger="api", enqueue=False)
    assert first.created and not second.created and second.outcome == "active"
    assert second.run.id == first.run.id
    assert db.session.scalar(select(func.count()).select_from(Run)) == 1


def test_new_run_allowed_after_previous_finished(app, make_connection):
    conn = make_connection()
    first = runs.trigger(conn, enqueue=False).run
    attempt = runs.claim(first.id, "w")
    assert runs.finish(first.id, attempt, COMPLETED)
    second = runs.trigger(conn, enqueue=False)
    assert second.created and second.run.id != first.id


def _race_trigger(config, barrier, results):
    # A forked child builds its own app, engine and session: a separate DB client per caller.
    from webapp import create_app

    child = create_app(config)
    with child.app_context():
        conn = runs.get_connection("racy")
        barrier.wait()
        result = runs.trigger(conn, trigger="api", enqueue=False)
        results.put((result.run.id, int(result.created)))


def test_concurrent_triggers_from_separate_processes_create_exactly_one_run(app, make_connection):
    make_connection(name="racy")
    outcomes = race_in_processes(app, _race_trigger, callers=20)
    assert len({run_id for run_id, _ in outcomes}) == 1, outcomes
    assert sum(created for _, created in outcomes) == 1
    assert db.session.scalar(select(func.count()).select_from(Run)) == 1


def test_manual_only_connection_refuses_automatic_triggers(app, make_connection):
    conn = make_connection(schedule="manual")
    for trigger in ("schedule", "event"):
        with pytest.raises(runs.TriggerRefused, match="manual-only"):
            runs.trigger(conn, trigger=trigger, enqueue=False)
    assert runs.trigger(conn, trigger="manual", enqueue=False).created


def test_record_runs_run_beside_a_sync_and_are_deduplicated_per_record(app, make_connection):
    conn = make_connection(settings=TAKES_WEBHOOKS)
    full = runs.trigger(conn, enqueue=False).run
    a1 = runs.trigger(conn, mode="record", record_key="items:item-1", trigger="webhook", enqueue=False)
    a2 = runs.trigger(conn, mode="record", record_key="items:item-1", trigger="webhook", enqueue=False)
    b = runs.trigger(conn, mode="record", record_key="items:item-2", trigger="webhook", enqueue=False)
    assert a1.created and not a2.created and a2.run.id == a1.run.id
    assert b.created and len({full.id, a1.run.id, b.run.id}) == 3


def test_cancel_of_queued_run_means_it_never_starts(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    assert runs.cancel(run.id) == CANCELLED
    assert runs.claim(run.id, "late-worker") is None
    db.session.expire_all()
    assert db.session.get(Run, run.id).status == CANCELLED


def test_cancel_of_running_run_sets_flag_and_keeps_it_running(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    runs.claim(run.id, "w")
    assert runs.cancel(run.id) == RUNNING
    db.session.expire_all()
    assert db.session.get(Run, run.id).cancel_requested


def test_orphaned_running_run_is_cancelled_directly_and_zombie_cannot_flip_it(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    attempt = runs.claim(run.id, "doomed")
    later = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    assert runs.cancel(run.id, now=later) == CANCELLED
    # The worker was only paused, not dead: it wakes up and tries to finish and to checkpoint.
    assert not runs.finish(run.id, attempt, COMPLETED)
    assert _heartbeat_finds_the_run_taken(app, run.id, attempt)
    db.session.expire_all()
    assert db.session.get(Run, run.id).status == CANCELLED


def test_finished_run_cannot_be_overwritten_by_a_late_failure(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    attempt = runs.claim(run.id, "w")
    assert runs.finish(run.id, attempt, COMPLETED)
    assert not runs.finish(run.id, attempt, FAILED, error_message="late")
    assert runs.retry_later(run.id, attempt, error_class="transient", error_message="late") is None
    db.session.expire_all()
    assert db.session.get(Run, run.id).status == COMPLETED


def test_sweep_requeues_stale_run_then_fails_it_when_attempts_run_out(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, max_attempts=2, enqueue=False).run
    attempt = runs.claim(run.id, "w1")
    future = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    assert runs.sweep_stale(now=future) == [(run.id, QUEUED)]
    assert _heartbeat_finds_the_run_taken(app, run.id, attempt)  # the old attempt lost the run
    second = runs.claim(run.id, "w2")
    assert second == attempt + 1
    future = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    assert runs.sweep_stale(now=future) == [(run.id, FAILED)]
    db.session.expire_all()
    failed = db.session.get(Run, run.id)
    assert failed.status == FAILED and "no heartbeat since" in failed.error_message
    assert runs.sweep_stale(now=future + timedelta(hours=1)) == []  # finished runs are never touched


def test_sweep_leaves_runs_with_fresh_heartbeats_alone(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    runs.claim(run.id, "w")
    assert runs.sweep_stale() == []
    db.session.expire_all()
    assert db.session.get(Run, run.id).status == RUNNING


def test_trigger_writes_an_activity_log_line(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, trigger="cli", requested_by="ops", enqueue=False).run
    messages = db.session.scalars(select(RunEvent.message).where(RunEvent.run_id == run.id)).all()
    assert messages == ["queued by cli (ops)"]


def test_unreadable_or_oddly_cased_manual_schedule_still_refuses_automatic_triggers(app, make_connection):
    for schedule in ("Manual", "every:banana"):
        conn = make_connection(name=f"c-{schedule}", schedule=schedule)
        with pytest.raises(runs.TriggerRefused, match="manual-only"):
            runs.trigger(conn, trigger="event", enqueue=False)


def _runs_reads_during(action):
    """(sql, params) of every SELECT on the runs table that `action` sends to the database."""
    from sqlalchemy import event

    seen = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith("SELECT") and "FROM runs" in statement:
            seen.append((statement, parameters))

    engine = db.engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def test_queued_record_run_lookups_use_the_partial_index_with_a_backlog(app, make_connection):
    # With thousands of runs queued (workers down, a burst of webhooks), finding a record's
    # queued run must not scan every queued run: SQLite took the status index for an IN
    # list and each dispatcher batch grew with the backlog.
    conn = make_connection(schedule="hourly:0")
    backlog = [("items", f"old-{n}", False) for n in range(3000)]
    for start in range(0, len(backlog), 500):
        runs.add_record_runs(conn, backlog[start:start + 500])
        db.session.commit()
    events = [("items", f"old-{n}", False) for n in range(10)] + [("items", f"new-{n}", False) for n in range(50)]

    found = []
    reads = _runs_reads_during(lambda: found.append(runs.add_record_runs(conn, events)))
    reads += _runs_reads_during(lambda: found.append(
        runs.trigger(conn, mode="record", record_key="items:old-7", trigger="api", enqueue=False)))
    reads += _runs_reads_during(lambda: found.append(runs.trigger(conn, trigger="schedule", enqueue=False)))

    (looked_up, created), again, full = found
    assert len(created) == 50 and len({run.id for run in looked_up}) == 60
    assert [run.id for run in looked_up[:10]] == [row.id for row in db.session.execute(
        select(Run.id).where(Run.record_key.in_([f"items:old-{n}" for n in range(10)])).order_by(Run.id))]
    assert not again.created and again.run.id == looked_up[7].id
    assert full.created
    assert reads, "no SELECT on runs was seen"
    if db.engine.dialect.name == "sqlite":  # no statistics: its planner's choice is fixed, so it is checked
        raw = db.session.connection().connection.driver_connection
        for statement, parameters in reads:
            plan = " ".join(str(row[3]) for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters))
            # By a partial index of active runs, or by id; never the status index, never a scan.
            assert "uq_runs_one_" in plan or "PRIMARY KEY" in plan, (statement, plan)
            assert "ix_runs_status_heartbeat" not in plan and "SCAN runs" not in plan, (statement, plan)
