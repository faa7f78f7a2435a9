"""Making Redis agree with the job table: runs whose RQ job was lost are enqueued again,
queue entries of runs that will never run are removed."""
from datetime import timedelta

from rq import Queue
from sqlalchemy import select

from tests.conftest import one_backend
from tests.support import wait_for
from webapp import recovery, runs
from webapp.extensions import db
from webapp.models import COMPLETED, QUEUED, Record, Run, utcnow
from webapp.queue import DEFAULT, EXECUTE_RUN, queue

pytestmark = one_backend


def _run(run_id):
    db.session.expire_all()
    return db.session.get(Run, run_id)


def _record_ids(conn_id):
    return sorted(db.session.scalars(select(Record.external_id).where(Record.connection_id == conn_id)).all())


def test_runs_queued_when_redis_was_flushed_are_re_enqueued_and_complete(app, make_connection, workers, redis):
    conns = [make_connection(name=f"c{i}", settings={"records": 40, "page_size": 20}) for i in range(3)]
    run_ids = [runs.trigger(conn).run.id for conn in conns]
    assert len(queue(DEFAULT).get_job_ids()) == 3
    redis.flushdb()  # Redis restarted without persistence: every queued job is gone
    assert queue(DEFAULT).get_job_ids() == []

    grace = app.config["LOST_JOB_GRACE_SECONDS"]
    assert recovery.requeue_lost() == []  # just queued: it may be enqueueing right now
    later = utcnow() + timedelta(seconds=grace + 1)
    assert recovery.requeue_lost(later) == run_ids
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
    assert recovery.reconcile_registries() == {"started": 0, "queued": 1}
    assert queue(DEFAULT).get_job_ids() == [live.rq_job_id]
    assert _run(live.id).status == QUEUED


def test_a_run_whose_job_waits_in_a_queue_nobody_serves_is_re_enqueued(app, make_connection, redis):
    """Jobs queued before the queues were named under the prefix (or before it changed)."""
    run = runs.trigger(make_connection(), enqueue=False).run
    Queue("default", connection=redis).enqueue_call(EXECUTE_RUN, args=(run.id,), job_id=run.rq_job_id)
    later = utcnow() + timedelta(seconds=app.config["LOST_JOB_GRACE_SECONDS"] + 1)
    assert recovery.requeue_lost(later) == [run.id]
    assert queue(DEFAULT).job_ids == [run.rq_job_id] and Queue("default", connection=redis).count == 0
