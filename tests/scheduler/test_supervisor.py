"""The supervisor's steps, called in-process with an injected clock."""
import json
import logging
from datetime import datetime, timedelta

import pytest
from rq.job import Job, JobStatus
from sqlalchemy import select

from scheduler.clock import FileClock
from scheduler.leader import holder, leader_key
from scheduler.supervisor import Step, Supervisor, heartbeat_key
from tests.support import wait_for
from webapp.extensions import db
from webapp.models import Connection, Run, SupervisorState, utcnow
from webapp.periodic import parse_maintenance_jobs
from webapp.queue import DEFAULT, queue
from worker.engine import Heartbeat

T0 = datetime(2030, 1, 1, 0, 0)


def _state(name):
    db.session.expire_all()
    return db.session.get(SupervisorState, name)


def test_tick_writes_the_heartbeat_to_redis_and_the_database(app, redis):
    supervisor = Supervisor(app, name="s1", clock=lambda: T0)
    supervisor.tick()
    row = _state("s1")
    assert row.last_tick_at == T0 and row.is_leader and row.pid == supervisor.pid
    beat = json.loads(redis.get(heartbeat_key("s1")))
    assert beat["at"] == "2030-01-01T00:00:00Z" and beat["leader"] is True
    assert redis.ttl(heartbeat_key("s1")) > 0
    supervisor.tick(T0 + timedelta(minutes=1))
    assert _state("s1").last_tick_at == T0 + timedelta(minutes=1)


def test_only_the_leader_fires_schedules(app, redis, make_connection):
    make_connection(name="five", schedule="every:5")
    leader, follower = Supervisor(app, name="a"), Supervisor(app, name="b")
    leader.tick(T0)
    follower.tick(T0)
    assert follower.tick(T0 + timedelta(minutes=5)) == []
    assert db.session.execute(select(Run)).first() is None
    assert [o.action for o in leader.tick(T0 + timedelta(minutes=5))] == ["enqueued"]
    assert (_state("a").is_leader, _state("b").is_leader) == (True, False)
    assert holder(redis) == "a"


def test_leader_only_steps_do_nothing_on_a_follower(app, redis):
    leader, follower = Supervisor(app, name="a"), Supervisor(app, name="b")
    leader.tick(T0)
    follower.tick(T0)
    calls = []
    step = Step("probe", 1, lambda now: calls.append(now) or "ran")
    assert follower.run_step(step) is None and calls == []
    assert leader.run_step(step) == "ran"


def test_new_leader_takes_over_and_clears_the_dead_leaders_flag(app, redis):
    dead, survivor = Supervisor(app, name="dead"), Supervisor(app, name="survivor")
    dead.tick(T0)
    survivor.tick(T0)
    redis.delete(leader_key())  # the dead leader's lease expired
    survivor.tick(T0 + timedelta(seconds=5))
    assert survivor.leading and _state("survivor").is_leader
    assert not _state("dead").is_leader  # it could not clear its own flag


def test_shutdown_releases_leadership_at_once(app, redis):
    supervisor = Supervisor(app, name="s1")
    supervisor.tick(T0)
    supervisor.request_stop()
    supervisor.shutdown()
    assert holder(redis) is None and not _state("s1").is_leader
    assert supervisor.run_step(Step("after-stop", 1, lambda now: "ran", leader_only=False)) is None


def test_failing_step_is_logged_and_the_supervisor_goes_on(app, redis, caplog):
    supervisor = Supervisor(app, name="s1", clock=lambda: T0)
    supervisor.tick()

    def broken(now):
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="scheduler"):
        assert supervisor.run_step(Step("broken", 1, broken)) is None
    assert "step broken failed" in caplog.text
    assert supervisor.run_step(Step("tick", 1, supervisor.tick, leader_only=False)) == []


def test_outbox_drain_step_enqueues_a_drain_unless_one_waits_in_its_queue(app, redis):
    supervisor = Supervisor(app, name="s1")
    [step] = [s for s in supervisor.steps() if s.name == "outbox_drain"]
    assert step.interval == app.config["OUTBOX_DRAIN_INTERVAL_SECONDS"]
    first = step.func(T0)
    assert first and step.func(T0) is None  # the first still waits
    [job_id] = queue(DEFAULT).get_job_ids()
    assert job_id == first and Job.fetch(job_id, connection=redis).func_name == "worker.jobs.send_due_outbox_events"
    # Once it has started, the next turn enqueues again: a started drain may belong to a
    # worker killed since (here even before the job cleared the flag).
    job, _ = queue(DEFAULT).dequeue_any([queue(DEFAULT)], None, connection=redis)
    job.set_status(JobStatus.STARTED)
    assert step.func(T0) not in (None, first)
    app.config["OUTBOX_DRAIN_INTERVAL_SECONDS"] = 0
    assert "outbox_drain" not in [s.name for s in Supervisor(app, name="s2").steps()]


def test_maintenance_jobs_are_configurable_and_never_pile_up(app, redis):
    app.config["MAINTENANCE_JOBS"] = "pkg.jobs.compact=600, pkg.jobs.report=3600"
    app.config["OUTBOX_DRAIN_INTERVAL_SECONDS"] = 0
    supervisor = Supervisor(app, name="s1")
    steps = {s.name: s for s in supervisor.steps() if s.name.startswith("maintenance:")}
    assert {name: s.interval for name, s in steps.items()} == {
        "maintenance:pkg.jobs.compact": 600.0, "maintenance:pkg.jobs.report": 3600.0}
    compact = steps["maintenance:pkg.jobs.compact"]
    first = compact.func(T0)
    assert first.func_name == "pkg.jobs.compact" and queue(DEFAULT).get_job_ids() == [first.id]
    assert compact.func(T0) is None  # waiting in its queue
    job, _ = queue(DEFAULT).dequeue_any([queue(DEFAULT)], None, connection=redis)
    job.set_status(JobStatus.STARTED)
    assert compact.func(T0) is None  # running: still pending
    job.set_status(JobStatus.FINISHED)
    second = compact.func(T0)
    assert second is not None and second.id != first.id


@pytest.mark.parametrize("value, hint", [
    ("pkg.jobs.compact", "dotted.function=seconds"),
    ("compact=60", "dotted function name"),
    ("pkg.jobs.compact=soon", "not a number"),
    ("pkg.jobs.compact=0", "must be positive"),
])
def test_bad_maintenance_job_settings_are_refused_with_the_fix(value, hint):
    with pytest.raises(ValueError, match=hint):
        parse_maintenance_jobs(value)


def test_file_clock_is_either_an_instant_or_an_offset_from_real_time(tmp_path):
    path = tmp_path / "clock"
    clock = FileClock(str(path))
    path.write_text("2030-01-01T10:00:00Z\n")
    assert clock() == datetime(2030, 1, 1, 10, 0)
    path.write_text("2030-01-01T12:00:00+02:00")
    assert clock() == datetime(2030, 1, 1, 10, 0)
    path.write_text("+3600")
    assert abs((clock() - utcnow()) - timedelta(hours=1)) < timedelta(seconds=5)
    path.write_text("yesterday")
    with pytest.raises(ValueError, match="neither an ISO timestamp"):
        clock()


def test_leader_that_cannot_reach_its_database_hands_the_lease_over(app, redis, tmp_path):
    from sqlalchemy.exc import OperationalError

    from tests.conftest import make_app

    cut_off = make_app("postgresql+psycopg://postgres@127.0.0.1:1/unreachable", app.config["REDIS_URL"], str(tmp_path))
    with cut_off.app_context():
        stranded = Supervisor(cut_off, name="stranded")
        with pytest.raises(OperationalError):
            stranded.tick(T0)
        assert not stranded.leading
    assert holder(redis) is None
    healthy = Supervisor(app, name="healthy")
    healthy.tick(T0)
    assert holder(redis) == "healthy"


def _one_heartbeat(app, run_id, attempt):
    """Let the worker's heartbeat thread (worker/engine.py) move the run's heartbeat, then stop it."""
    def heartbeat_at():
        db.session.rollback()  # a fresh read, not this session's snapshot
        return db.session.scalar(select(Run.heartbeat_at).where(Run.id == run_id))

    before = heartbeat_at()
    beat = Heartbeat(app, run_id, attempt, interval=0.01)
    beat.start()
    try:
        wait_for(lambda: heartbeat_at() != before, timeout=10, message="the heartbeat to move")
    finally:
        beat.stop()


def test_sweep_judges_heartbeats_by_its_own_monotonic_clock_not_by_wall_clock_jumps(app, make_connection):
    from webapp import runs as run_rules

    ticks = [1000.0]
    supervisor = Supervisor(app, name="s-mono", monotonic=lambda: ticks[0])
    conn = make_connection(name="busy")
    run = run_rules.trigger(conn, enqueue=False).run
    attempt = run_rules.claim(run.id, "w")
    stale_after = app.config["STALE_AFTER_SECONDS"]

    assert supervisor.sweep(now=utcnow() + timedelta(days=1)) == []  # a clock a day ahead sweeps nothing
    ticks[0] += stale_after / 2
    _one_heartbeat(app, run.id, attempt)  # the worker is alive: its heartbeat moves
    assert supervisor.sweep(now=utcnow() + timedelta(days=1)) == []
    ticks[0] += stale_after - 0.01
    assert supervisor.sweep() == []  # unchanged, but not yet for the whole threshold
    ticks[0] += 0.02
    assert supervisor.sweep() == [(run.id, "queued")]  # unchanged for STALE_AFTER: the worker is gone
    db.session.expire_all()
    assert db.session.get(Run, run.id).status == "queued"


def test_a_slow_step_neither_costs_the_lease_nor_holds_back_the_slots_due_meanwhile(app, redis, make_connection):
    make_connection(name="five", schedule="every:5")
    ticks, business = [1000.0], [T0]
    leader = Supervisor(app, name="a", clock=lambda: business[0], monotonic=lambda: ticks[0])
    ttl = app.config["LEADER_TTL_SECONDS"]
    seen = []

    def slow(now):
        # Each step takes 60 % of the lease's TTL on the supervisor's own clock (the alerts step
        # on a first start took minutes), and a slot falls due meanwhile.
        seen.append(db.session.scalar(select(Connection.next_run_at).where(Connection.name == "five")))
        ticks[0] += 0.6 * ttl
        business[0] += timedelta(minutes=5)
        return "done"

    leader.steps = lambda: [Step("tick", 5, leader.tick, leader_only=False)] + [
        Step(f"slow{i}", 60, slow) for i in range(3)]
    done = leader.run_all_steps()

    # Three in a row outlast the TTL, yet the last one still ran as leader: the lease was renewed
    # between steps; and each slot that fell due during a step was fired before the next one.
    assert [done[f"slow{i}"] for i in range(3)] == ["done", "done", "done"]
    assert seen == [T0 + timedelta(minutes=m) for m in (5, 10, 15)]  # each slot taken before the next step
    assert leader.lease.held and holder(redis) == "a"
    rival = Supervisor(app, name="b")
    rival.tick(business[0])
    assert not rival.leading
