"""Recovery end to end with real worker processes: a SIGKILLed worker's run, Redis
flushed under queued runs, and RQ's registries brought back in line with the job table."""
from datetime import timedelta

from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import select

from scheduler.supervisor import Supervisor
from tests.conftest import one_backend
from tests.scheduler.conftest import kill_like_a_dead_machine
from tests.support import wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, QUEUED, Record, Run, RunEvent, utcnow
from webapp.queue import DEFAULT, queue

pytestmark = one_backend


def _run(run_id):
    db.session.expire_all()
    return db.session.get(Run, run_id)


def _record_ids(conn_id):
    return sorted(db.session.scalars(select(Record.external_id).where(Record.connection_id == conn_id)).all())


def _started_ids(redis):
    return StartedJobRegistry(queue=queue(DEFAULT, redis)).get_job_ids(cleanup=False)


def test_sigkilled_workers_runs_are_requeued_and_complete_exactly_or_fail_with_the_reason_when_attempts_run_out(
        app, make_connection, workers, supervisors, redis):
    settings = {"records": 200, "page_size": 10, "latency_ms": 100}
    resumable = runs.trigger(make_connection(name="resumable", settings=settings)).run.id
    last_try = runs.trigger(make_connection(name="last-try", settings=settings), max_attempts=1).run.id
    by_name = {w.name: w for w in (workers.start(), workers.start())}  # one run each
    for run_id in (resumable, last_try):
        mid_way = wait_for(lambda: (r := _run(run_id)).processed >= 20 and r, timeout=60, message="the sync mid-way")
        kill_like_a_dead_machine(by_name[mid_way.worker_name])
    kept = _run(last_try).processed
    assert {_run(i).status for i in (resumable, last_try)} == {"running"}
    assert f"run-{resumable}-1" in _started_ids(redis)  # RQ still believes the dead job runs
    supervisors.start(SUPERVISOR_TICK_SECONDS=0.2, SWEEP_INTERVAL_SECONDS=0.2)
    workers.start()

    done = wait_for(lambda: (r := _run(resumable)).status == COMPLETED and r, timeout=90, message="the resumed run")
    assert done.attempt == 2
    assert _record_ids(done.connection_id) == [f"item-{i:07d}" for i in range(200)]
    assert (done.seen, done.created, done.updated, done.deleted) == (200, 200, 0, 0)  # nothing counted twice
    messages = db.session.scalars(select(RunEvent.message).where(RunEvent.run_id == resumable)).all()
    assert any("worker lost (no heartbeat since" in m and "requeued" in m for m in messages)

    failed = _run(last_try)
    assert failed.status == FAILED and failed.error_class == "worker_lost" and failed.attempt == 1
    assert failed.error_message.startswith("worker lost: no heartbeat since ")
    assert "no attempts left (1/1)" in failed.error_message
    assert len(_record_ids(failed.connection_id)) == kept  # what was written stays; nothing deleted

    # The supervisor settled the dead jobs in RQ too, long before RQ's own expiry would.
    for run_id in (resumable, last_try):
        wait_for(lambda: f"run-{run_id}-1" not in _started_ids(redis), timeout=10, message="the started registry")
        dead_job = Job.fetch(f"run-{run_id}-1", connection=redis)
        assert dead_job.get_status() == JobStatus.FAILED
        assert dead_job.id in FailedJobRegistry(queue=queue(DEFAULT, redis)).get_job_ids()
        assert "abandoned: synchub run" in dead_job.latest_result().exc_string


def test_sweep_never_touches_a_finished_run(app, make_connection, redis):
    run = runs.trigger(make_connection(), enqueue=False).run
    attempt = runs.claim(run.id, "w")
    runs.finish(run.id, attempt, COMPLETED)
    much_later = utcnow() + timedelta(days=1)
    supervisor = Supervisor(app, name="s1", clock=lambda: much_later)
    supervisor.tick()
    assert supervisor.sweep() == [] and supervisor.requeue_lost() == []
    assert _run(run.id).status == COMPLETED


def test_runs_queued_when_redis_was_flushed_are_re_enqueued_and_complete(app, make_connection, workers, redis):
    conns = [make_connection(name=f"c{i}", settings={"records": 40, "page_size": 20}) for i in range(3)]
    run_ids = [runs.trigger(conn).run.id for conn in conns]
    assert len(queue(DEFAULT).get_job_ids()) == 3
    redis.flushdb()  # Redis restarted without persistence: every queued job is gone
    assert queue(DEFAULT).get_job_ids() == []

    grace = app.config["LOST_JOB_GRACE_SECONDS"]
    assert Supervisor(app, name="s1").requeue_lost() == []  # just queued: it may be enqueueing right now
    later = utcnow() + timedelta(seconds=grace + 1)
    assert Supervisor(app, name="s1", clock=lambda: later).requeue_lost() == run_ids
    assert sorted(queue(DEFAULT).get_job_ids()) == sorted(_run(i).rq_job_id for i in run_ids)
    workers.start()
    for run_id, conn in zip(run_ids, conns):
        done = wait_for(lambda: (r := _run(run_id)).status == COMPLETED and r, timeout=60, message=f"run {run_id}")
        assert done.attempt == 1 and done.created == 40
        assert _record_ids(conn.id) == [f"item-{i:07d}" for i in range(40)]


def test_queue_entries_of_runs_that_will_never_run_are_removed(app, make_connection, redis):
    live = runs.trigger(make_connection(name="live")).run
    cancelled = runs.trigger(make_connection(name="gone")).run
    assert runs.cancel(cancelled.id) == "cancelled"  # the row is final; its RQ job is still queued
    supervisor = Supervisor(app, name="s1")
    supervisor.tick()
    assert supervisor.reconcile_rq() == {"started": 0, "queued": 1}
    assert queue(DEFAULT).get_job_ids() == [live.rq_job_id]
    assert _run(live.id).status == QUEUED
