"""Firing schedules: each due slot becomes one run, exactly once, whatever races for it."""
import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from tests.support import race_in_processes
from webapp import runs
from webapp.extensions import db
from webapp.models import Connection, Run
from webapp.queue import LOW, queue
from webapp.schedules import firing

T0 = datetime(2030, 1, 1, 0, 0)


def minutes(n):
    return T0 + timedelta(minutes=n)


def _finish_queued_runs():
    """Stand in for a worker: end every queued run so the next slot is not skipped."""
    for run_id in db.session.execute(select(Run.id).where(Run.status == "queued")).scalars().all():
        runs.cancel(run_id, requested_by="test")


def _slots(connection_name):
    conn = runs.get_connection(connection_name)
    found = db.session.execute(select(Run.requested_by, Run.trigger).where(Run.connection_id == conn.id)).all()
    assert all(trigger == "schedule" for _, trigger in found)
    return sorted(by.split("slot ")[1].rstrip(")") for by, _ in found)


def _simulate(start, end, step=1):
    for k in range(start, end + 1, step):
        firing.plan_next_runs(minutes(k))
        firing.fire_due(minutes(k))
        _finish_queued_runs()


def test_simulated_hour_enqueues_each_slot_once_on_the_low_queue(app, make_connection, redis):
    make_connection(name="five", schedule="every:5")
    make_connection(name="hourly", schedule="hourly:0")
    make_connection(name="cron", schedule="cron:*/20 * * * *")
    _simulate(0, 60)
    assert _slots("five") == [f"2030-01-01T{m.hour:02d}:{m.minute:02d}Z" for m in (minutes(k) for k in range(5, 61, 5))]
    assert _slots("hourly") == ["2030-01-01T01:00Z"]
    assert _slots("cron") == ["2030-01-01T00:20Z", "2030-01-01T00:40Z", "2030-01-01T01:00Z"]
    job_ids = queue(LOW).get_job_ids()
    assert sorted(job_ids) == sorted(db.session.execute(select(Run.rq_job_id)).scalars().all())
    assert runs.get_connection("five").next_run_at == minutes(65)


def test_manual_only_connection_is_never_enqueued_whatever_its_other_fields_say(app, make_connection, redis):
    every_trigger = {"allowed_triggers": ["manual", "schedule", "webhook", "event", "api"]}
    for name, text, settings in (("manual", "manual", {}), ("shouting", "MANUAL", {}), ("padded", " manual ", {}),
                                 ("zoom", "manual", every_trigger)):  # a policy cannot give it slots
        conn = make_connection(name=name, schedule=text, settings={"schedule_mode": "incremental", **settings})
        conn.next_run_at = T0 - timedelta(days=1)  # as if it was scheduled once
    db.session.commit()
    _simulate(0, 24 * 60, step=7)
    assert db.session.execute(select(Run)).first() is None
    assert all(c.next_run_at is None for c in db.session.execute(select(Connection)).scalars())


def test_scheduled_connection_whose_trigger_policy_takes_no_schedule_gets_no_slot(app, make_connection, redis):
    conn = make_connection(name="events-only", schedule="every:5", settings={"allowed_triggers": ["event", "manual"]})
    conn.next_run_at = minutes(5)  # planned before the policy was set
    db.session.commit()
    outcomes = firing.fire_due(minutes(5))  # a slot already planned is refused, with the reason
    assert [(o.action, o.reason) for o in outcomes] == [
        ("refused", "schedule triggers are off for connection 'events-only'")]
    _simulate(5, 60)
    assert db.session.execute(select(Run)).first() is None
    assert runs.get_connection("events-only").next_run_at is None


def test_slot_is_skipped_and_logged_while_the_previous_run_is_active(app, make_connection, redis, caplog):
    from scheduler.supervisor import Supervisor

    conn = make_connection(name="busy", schedule="every:5")
    firing.plan_next_runs(minutes(0))
    active = runs.trigger(conn, trigger="manual", enqueue=False).run
    supervisor = Supervisor(app, name="s1")
    with caplog.at_level(logging.INFO, logger="scheduler"):
        outcomes = supervisor.enqueue_due(minutes(5))
    assert [(o.action, o.run_id) for o in outcomes] == [("skipped_active", active.id)]
    assert "still active" in caplog.text and f"run={active.id}" in caplog.text
    assert db.session.scalar(select(Run.id).where(Run.id != active.id)) is None
    assert runs.get_connection("busy").next_run_at == minutes(10)  # the slot is used up, not queued behind


def test_missed_slots_are_coalesced_into_one_run(app, make_connection, redis):
    make_connection(name="five", schedule="every:5")
    firing.plan_next_runs(minutes(0))
    outcomes = firing.fire_due(minutes(32))  # the supervisor was down for half an hour
    assert [(o.action, o.missed) for o in outcomes] == [("enqueued", 6)]
    assert runs.get_connection("five").next_run_at == minutes(35)


def test_disabled_connection_gets_no_run_and_no_next_run_time(app, make_connection, redis):
    conn = make_connection(name="off", schedule="every:5", enabled=False)
    conn.next_run_at = minutes(5)
    db.session.commit()
    _simulate(0, 30)
    assert db.session.execute(select(Run)).first() is None
    assert runs.get_connection("off").next_run_at is None


def test_unusable_schedule_is_never_triggered_and_logged_once(app, make_connection, redis, caplog):
    make_connection(name="typo", schedule="every:0")
    with caplog.at_level(logging.ERROR, logger="webapp.schedules.firing"):
        _simulate(0, 10)
    assert db.session.execute(select(Run)).first() is None
    assert caplog.text.count("unusable schedule") == 1


def test_unknown_schedule_mode_is_refused_and_the_slot_used_up(app, make_connection, redis):
    make_connection(name="odd", schedule="every:5", settings={"schedule_mode": "range"})
    firing.plan_next_runs(minutes(0))
    outcomes = firing.fire_due(minutes(5))
    assert outcomes[0].action == "refused" and "schedule_mode" in outcomes[0].reason
    assert runs.get_connection("odd").next_run_at == minutes(10)


def test_schedule_mode_setting_picks_the_mode_of_scheduled_runs(app, make_connection, redis):
    make_connection(name="delta", schedule="every:5", settings={"schedule_mode": "incremental"})
    firing.plan_next_runs(minutes(0))
    firing.fire_due(minutes(5))
    assert db.session.execute(select(Run.mode, Run.trigger)).one() == ("incremental", "schedule")


def test_reschedule_applies_a_new_schedule_at_once(app, make_connection):
    conn = make_connection(name="edit", schedule="hourly:0")
    conn.schedule = "every:5"
    assert firing.reschedule(conn, now=datetime(2030, 1, 1, 10, 2)) == datetime(2030, 1, 1, 10, 5)
    conn.schedule = "manual"
    assert firing.reschedule(conn) is None


def _race_fire_due(config, barrier, results):
    from webapp import create_app

    child = create_app(config)
    with child.app_context():
        barrier.wait()
        outcomes = firing.fire_due(minutes(5))
        results.put([(o.connection, o.action) for o in outcomes])


def test_concurrent_supervisors_enqueue_each_slot_once(app, make_connection, redis):
    """Leadership aside: the conditional UPDATE alone makes racing supervisors agree."""
    names = [f"c{i}" for i in range(4)]
    for name in names:
        make_connection(name=name, schedule="every:5")
    firing.plan_next_runs(minutes(0))
    outcomes = [item for result in race_in_processes(app, _race_fire_due, callers=6) for item in result]
    enqueued = sorted(name for name, action in outcomes if action == "enqueued")
    assert enqueued == names
    for name in names:
        conn = runs.get_connection(name)
        assert db.session.scalar(select(Run.id).where(Run.connection_id == conn.id)) is not None
        assert len(db.session.execute(select(Run.id).where(Run.connection_id == conn.id)).all()) == 1
        assert conn.next_run_at == minutes(10)
    assert len(queue(LOW).get_job_ids()) == len(names)
