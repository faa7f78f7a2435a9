"""webapp/queue.py: names under the install's prefix, job ids, and enqueue_unless_pending."""
import threading

import pytest
from flask_migrate import upgrade
from rq.job import Job, JobStatus
from rq.exceptions import TimeoutFormatError
from sqlalchemy import func, literal, select

from tests.conftest import make_app
from tests.support import WorkerProcess
from webapp import queue, redis_keys, runs
from webapp.extensions import db
from webapp.models import COMPLETED, QUEUED, Connection, Record, Run

FUNC = "pkg.jobs.compact"


def _enqueue(**kwargs):
    return queue.enqueue_unless_pending(redis_keys.key("test", "marker"), queue.DEFAULT, FUNC,
                                        marker_ttl=kwargs.pop("marker_ttl", 60), **kwargs)


def _take(redis):
    """What a worker does first: take the job off its queue (it is still "queued")."""
    job, _ = queue.queue(queue.DEFAULT).dequeue_any([queue.queue(queue.DEFAULT)], None, connection=redis)
    return job


def test_names_and_job_ids_carry_the_prefix(app):
    app.config["REDIS_PREFIX"] = "acme-prod"
    assert redis_keys.key("webhooks", "dispatch-kick") == "acme-prod:webhooks:dispatch-kick"
    assert queue.queue(queue.HIGH).name == "acme-prod:high"
    assert queue.run_job_id(12, 3) == "acme-prod-run-12-3"
    assert queue.parse_run_job_id("acme-prod-run-12-3") == (12, 3)
    for other in ("synchub-run-12-3", "run-12-3", "acme-prod-outbox-ab12", "acme-prod-run-12", None):
        assert queue.parse_run_job_id(other) == (None, None)
    assert queue.job_id("maintenance").startswith("acme-prod-maintenance-")
    app.config["REDIS_PREFIX"] = "acme:prod"
    with pytest.raises(ValueError, match="only letters, digits"):
        redis_keys.key("x")


def test_the_bulk_insert_expression_gives_the_same_job_id(app):
    assert db.session.scalar(select(queue.run_job_id_sql(literal(41), 2))) == queue.run_job_id(41, 2)


def test_a_job_waiting_in_its_queue_covers_later_callers(app, redis):
    first = _enqueue()
    assert first is not None and first.func_name == FUNC
    assert _enqueue() is None and _enqueue() is None
    assert queue.queue(queue.DEFAULT).job_ids == [first.id]
    assert redis.get(redis_keys.key("test", "marker")).decode() == first.id


def test_released_marker_lets_the_next_caller_enqueue(app, redis):
    first = _enqueue()
    queue.release(redis_keys.key("test", "marker"))
    second = _enqueue()
    assert second is not None and queue.queue(queue.DEFAULT).job_ids == [first.id, second.id]


def test_a_job_taken_by_a_worker_that_died_before_starting_it_is_replaced(app, redis):
    first = _enqueue()
    assert _take(redis).id == first.id  # RQ still calls it "queued", but no worker will run it
    second = _enqueue()
    assert second is not None and second.id != first.id


@pytest.mark.parametrize("status", [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED])
def test_a_job_that_ended_without_releasing_its_marker_is_replaced(app, redis, status):
    _enqueue()
    _take(redis).set_status(status)
    assert _enqueue() is not None


def test_a_running_job_is_pending_only_when_the_caller_says_so(app, redis):
    first = _enqueue(running_is_pending=True)
    _take(redis).set_status(JobStatus.STARTED)
    assert _enqueue(running_is_pending=True) is None
    second = _enqueue()  # by default a started job has looked already: it covers nothing new
    assert second is not None and second.id != first.id


def test_a_vanished_job_is_honoured_for_the_grace_period_then_replaced(app, redis):
    first = _enqueue()
    Job.fetch(first.id, connection=redis).delete()  # as if its caller had not enqueued it yet
    assert _enqueue(grace_seconds=30) is None
    assert _enqueue(grace_seconds=0) is not None


def test_a_young_marker_is_trusted_without_looking_at_its_job(app, redis):
    _enqueue()
    _take(redis).set_status(JobStatus.FINISHED)
    assert _enqueue(trust_seconds=30) is None
    assert _enqueue(trust_seconds=0) is not None


def test_callers_racing_on_a_stale_marker_enqueue_one_job(app, redis):
    _enqueue()
    _take(redis).set_status(JobStatus.FINISHED)
    callers, barrier, results = 8, threading.Barrier(8), []

    def caller():
        with app.app_context():
            barrier.wait()
            results.append(_enqueue())

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    [new] = [job for job in results if job is not None]
    assert queue.queue(queue.DEFAULT).job_ids == [new.id]
    assert redis.get(redis_keys.key("test", "marker")).decode() == new.id


def test_a_failed_enqueue_removes_its_marker(app, redis):
    with pytest.raises(TimeoutFormatError):
        _enqueue(timeout="soon")
    assert not redis.exists(redis_keys.key("test", "marker"))
    assert _enqueue() is not None


def test_the_workers_of_an_install_are_those_on_its_queues(app, redis):
    from worker.worker import SynchubWorker

    ours = SynchubWorker(app, name="ours")
    app.config["REDIS_PREFIX"] = "other"
    theirs = SynchubWorker(app, name="theirs")
    app.config["REDIS_PREFIX"] = "synchub"
    for worker in (ours, theirs):
        worker.register_birth()
    try:
        assert [worker.name for worker in queue.workers()] == ["ours"]
    finally:
        for worker in (ours, theirs):
            worker.register_death()


def _install(tmp_path, redis_url, name, prefix):
    """An install of its own: its own database (ids from 1), one Redis shared with the others."""
    app = make_app(f"sqlite:///{tmp_path / name}.db", redis_url, str(tmp_path / name), REDIS_PREFIX=prefix)
    with app.app_context():
        upgrade()
        connection = Connection(name="demo", connector="sandbox", settings={"records": 20, "page_size": 10})
        connection.credentials = {}
        db.session.add(connection)
        db.session.commit()
        run = runs.trigger(connection).run
        ids = run.id, run.rq_job_id
        db.session.remove()
        db.engine.dispose()
    return (app, *ids)


def _status(app, run_id):
    with app.app_context():
        status = db.session.get(Run, run_id).status
        records = db.session.scalar(select(func.count()).select_from(Record))
        db.session.remove()
        db.engine.dispose()
        return status, records


def test_two_installs_on_one_redis_run_only_their_own_jobs(tmp_path, redis_url):
    one, run_one, job_one = _install(tmp_path, redis_url, "one", "one")
    two, run_two, job_two = _install(tmp_path, redis_url, "two", "two")
    assert run_one == run_two and job_one != job_two  # the same run id, two jobs
    with one.app_context():
        assert queue.queue(queue.DEFAULT).job_ids == [job_one]
    with two.app_context():
        assert queue.queue(queue.DEFAULT).job_ids == [job_two]

    assert WorkerProcess(one, burst=True, env={"SYNCHUB_REDIS_PREFIX": "one"}).start().wait(90) == 0
    assert _status(one, run_one) == (COMPLETED, 20)
    assert _status(two, run_two) == (QUEUED, 0)  # the other install's job was left alone
    assert WorkerProcess(two, burst=True, env={"SYNCHUB_REDIS_PREFIX": "two"}).start().wait(90) == 0
    assert _status(two, run_two) == (COMPLETED, 20)
