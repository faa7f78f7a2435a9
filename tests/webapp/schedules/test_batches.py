"""Firing due slots in batches (webapp/schedules/batches.py): the same outcomes as slot by
slot, each slot fired exactly once by racing supervisors, every run enqueued and run."""
from datetime import datetime, timedelta

from rq.job import Job
from sqlalchemy import func, select

from tests.support import race_in_processes, wait_for
from webapp import connection_issues, recovery, runs
from webapp.extensions import db
from webapp.models import COMPLETED, Connection, Run, RunEvent
from webapp.queue import LOW, queue, run_job_id
from webapp.schedules import batches, firing

T0 = datetime(2030, 1, 1, 0, 0)
DUE, NEXT = T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)


def _due(make_connection, name, schedule="every:5", settings=None, enabled=True):
    conn = make_connection(name=name, schedule=schedule, settings=settings, enabled=enabled)
    conn.next_run_at = DUE
    db.session.commit()
    return conn


def _runs_of(name):
    conn = runs.get_connection(name)
    found = db.session.execute(select(Run).where(Run.connection_id == conn.id).order_by(Run.id)).scalars().all()
    db.session.rollback()
    return found


def _messages(run_id):
    return db.session.execute(select(RunEvent.message).where(RunEvent.run_id == run_id)
                              .order_by(RunEvent.id)).scalars().all()


def test_a_batch_mixing_every_kind_of_connection_gives_each_the_outcome_of_slot_by_slot_firing(
        app, make_connection, redis, monkeypatch):
    monkeypatch.setattr(batches, "BATCH_SIZE", 3)  # several batches, each with a mix
    free = [_due(make_connection, f"free-{i}") for i in range(4)]
    skip = _due(make_connection, "busy-skip")
    buffer = _due(make_connection, "busy-buffer", settings={"overlap_policy": "buffer_one"})
    skip_run = runs.trigger(skip, trigger="manual", enqueue=False).run
    buffer_run = runs.trigger(buffer, trigger="manual", enqueue=False).run
    _due(make_connection, "manual", schedule="manual")  # a stale next_run_at must not tempt anyone
    _due(make_connection, "disabled", enabled=False)
    _due(make_connection, "odd-mode", settings={"schedule_mode": "range"})
    _due(make_connection, "events-only", settings={"allowed_triggers": ["event", "manual"]})
    paused = _due(make_connection, "paused")
    assert connection_issues.pause(paused.id, "the credentials were rejected")
    _due(make_connection, "delta", settings={"schedule_mode": "incremental"})
    db.session.commit()

    outcomes = firing.fire_due(DUE + timedelta(seconds=30))

    by_name = {o.connection: o for o in outcomes}
    assert [o.connection for o in outcomes] == [c for c in (
        "free-0", "free-1", "free-2", "free-3", "busy-skip", "busy-buffer", "odd-mode", "events-only", "paused",
        "delta")]  # in the order they came due (by id here); manual and disabled have none
    assert {name: o.action for name, o in by_name.items()} == {
        "free-0": "enqueued", "free-1": "enqueued", "free-2": "enqueued", "free-3": "enqueued",
        "busy-skip": "skipped_active", "busy-buffer": "follow_up", "odd-mode": "refused", "events-only": "refused",
        "paused": "refused", "delta": "enqueued"}
    assert "schedule_mode 'range'" in by_name["odd-mode"].reason
    assert by_name["events-only"].reason == "schedule triggers are off for connection 'events-only'"
    assert by_name["paused"].reason.startswith("connection 'paused' is paused")
    assert all(o.next_run_at == NEXT and o.missed == 1 for o in outcomes)

    fired = []
    for conn in free + [runs.get_connection("delta")]:
        (run,) = _runs_of(conn.name)
        assert by_name[conn.name].run_id == run.id
        assert (run.status, run.trigger, run.attempt, run.rq_job_id) == ("queued", "schedule", 0, run_job_id(run.id, 1))
        assert run.mode == ("incremental" if conn.name == "delta" else "full")
        assert run.requested_by == "supervisor (slot 2030-01-01T00:05Z)"
        assert run.params_key == runs.params_key(run.mode, None, None)
        assert _messages(run.id) == ["queued by schedule (supervisor (slot 2030-01-01T00:05Z))"]
        fired.append(run.rq_job_id)
    assert sorted(queue(LOW).get_job_ids()) == sorted(fired)  # every new run handed to RQ, nothing else

    assert [r.id for r in _runs_of("busy-skip")] == [skip_run.id]
    assert any("a scheduled slot was skipped" in m for m in _messages(skip_run.id))
    active_run, follow_up = _runs_of("busy-buffer")
    assert active_run.id == buffer_run.id
    assert by_name["busy-buffer"].run_id == follow_up.id and follow_up.status == "waiting"
    for name in ("manual", "disabled", "odd-mode", "events-only", "paused"):
        assert _runs_of(name) == []
    assert runs.get_connection("paused").paused_skipped == 1  # counted once, as slot by slot
    next_runs = dict(db.session.execute(select(Connection.name, Connection.next_run_at)).all())
    assert next_runs.pop("manual") == DUE and next_runs.pop("disabled") == DUE  # never taken
    assert set(next_runs.values()) == {NEXT}  # every other slot is used up, refused ones too

    assert firing.fire_due(DUE + timedelta(seconds=40)) == []  # nothing fires twice


def test_the_bulk_insert_leaves_out_a_connection_whose_active_sync_appeared_after_the_check(app, make_connection,
                                                                                         redis):
    free, busy = make_connection(name="free"), make_connection(name="busy")
    active = runs.trigger(busy, trigger="manual", enqueue=False).run
    row = dict(mode="full", params={}, trigger="schedule", requested_by="test", streams=[], params_key="k",
               status="queued", attempt=0, max_attempts=3)
    inserted = runs.insert_queued_syncs([dict(row, connection_id=busy.id), dict(row, connection_id=free.id)])
    db.session.commit()
    assert list(inserted) == [free.id]  # no IntegrityError: the index leaves the row out
    assert inserted[free.id].rq_job_id == run_job_id(inserted[free.id].id, 1)
    assert db.session.get(Run, inserted[free.id].id).rq_job_id == inserted[free.id].rq_job_id
    assert [r.id for r in _runs_of("busy")] == [active.id]


def _race_fire_due(config, barrier, results):
    from webapp import create_app
    from webapp.schedules import firing as child_firing

    child = create_app(config)
    with child.app_context():
        barrier.wait()
        outcomes = child_firing.fire_due(DUE)
        results.put([(o.connection, o.action, o.run_id) for o in outcomes])


def test_supervisors_racing_on_the_same_batches_fire_each_slot_exactly_once(app, make_connection, redis,
                                                                             monkeypatch):
    monkeypatch.setattr(batches, "BATCH_SIZE", 40)  # the forked callers inherit it
    names = [f"c{i:03d}" for i in range(120)]
    for name in names:
        _due(make_connection, name)
    busy = [runs.get_connection(name) for name in names[::30]]  # a few meet an active sync (skip)
    active = {c.name: runs.trigger(c, trigger="manual", enqueue=False).run.id for c in busy}

    outcomes = [item for result in race_in_processes(app, _race_fire_due, callers=4) for item in result]

    decided = sorted((name, action) for name, action, _ in outcomes if action != "taken")
    assert decided == sorted((name, "skipped_active" if name in active else "enqueued") for name in names)
    for name in names:
        fired = _runs_of(name)
        if name in active:
            assert [r.id for r in fired] == [active[name]]
            skipped = [m for m in _messages(active[name]) if "a scheduled slot was skipped" in m]
            assert len(skipped) == 1  # noted by the one supervisor that took the slot
        else:
            assert len(fired) == 1 and fired[0].trigger == "schedule"
    scheduled = db.session.execute(select(Run.rq_job_id).where(Run.trigger == "schedule")).scalars().all()
    assert len(scheduled) == len(names) - len(active)
    job_ids = queue(LOW).get_job_ids()
    assert len(job_ids) == len(set(job_ids)) and sorted(job_ids) == sorted(scheduled)
    assert db.session.scalar(select(func.count()).select_from(Connection).where(Connection.next_run_at != NEXT)) == 0


def test_every_run_fired_in_a_batch_is_run_by_a_worker_and_a_lost_enqueue_is_swept(app, make_connection, redis,
                                                                                    workers):
    names = [f"w{i}" for i in range(6)]
    for name in names:
        _due(make_connection, name, settings={"records": 20, "page_size": 10})
    outcomes = firing.fire_due(DUE)
    assert [o.action for o in outcomes] == ["enqueued"] * len(names)
    # Lose one run's queue entry, as when Redis drops it: the lost-job sweep enqueues it again.
    lost = outcomes[0].run_id
    Job.fetch(db.session.get(Run, lost).rq_job_id, connection=redis).delete()
    db.session.rollback()
    assert recovery.requeue_lost(grace_seconds=0) == [lost]

    workers.start()

    def all_completed():
        db.session.expire_all()
        statuses = db.session.execute(select(Run.status).where(Run.trigger == "schedule")).scalars().all()
        db.session.rollback()
        return statuses == [COMPLETED] * len(names)

    wait_for(all_completed, timeout=90, message="every scheduled run completed by the worker")
