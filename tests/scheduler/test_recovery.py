"""Recovery end to end with real worker and supervisor processes: a SIGKILLed worker's
runs, and RQ's registries brought back in line with the job table (webapp/recovery.py's
own tests are in tests/webapp/test_recovery.py)."""
from datetime import timedelta

from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import select

from scheduler.supervisor import Supervisor
from tests.conftest import one_backend
from tests.scheduler.conftest import kill_like_a_dead_machine
from tests.support import wait_for
from webapp import recovery, runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, Record, Run, RunEvent, utcnow
from webapp.queue import DEFAULT, queue, run_job_id

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
    assert run_job_id(resumable, 1) in _started_ids(redis)  # RQ still believes the dead job runs
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
        wait_for(lambda: run_job_id(run_id, 1) not in _started_ids(redis), timeout=10, message="the started registry")
        dead_job = Job.fetch(run_job_id(run_id, 1), connection=redis)
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
    assert supervisor.sweep() == [] and recovery.requeue_lost(much_later) == []
    assert _run(run.id).status == COMPLETED
