"""Asking for a drain after a commit, and flags left by jobs whose worker died
(webapp/outbox/enqueue.py)."""
from rq import Queue

from tests.webapp.outbox.support import NOMINATION, loops, loops_connection, vote  # noqa: F401  (fixture)
from webapp import outbox
from webapp.extensions import db
from webapp.outbox.enqueue import drain_job_marker, enqueue_drain, request_sending, send_job_marker
from webapp.queue import queue_name


def test_commit_enqueues_one_delivery_job_and_a_queued_job_covers_later_commits(app, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    first = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION)
    db.session.commit()
    queue = Queue(queue_name("high"), connection=redis)
    jobs = queue.jobs
    assert [(j.func_name, j.args) for j in jobs] == [("worker.jobs.send_outbox_event", (first.ids[0],))]
    vote("carol")
    db.session.commit()
    assert queue.count == 1  # the queued job has not started: it will claim carol's row too
    redis.delete(send_job_marker())  # what the job does when it starts
    second = vote("dave")
    db.session.commit()
    assert [j.args for j in queue.jobs] == [(first.ids[0],), (second.ids[0],)]


def test_a_flag_left_by_a_job_whose_worker_died_does_not_hold_back_deliveries(app, redis, make_connection, loops):
    """A job clears its flag when it starts; a worker killed after popping the job (RQ leaves
    it 'queued' in its intermediate list) or after starting it but before the job cleared
    the flag, left a flag that stopped every delivery job, and the periodic drain's, from
    being enqueued until the flag's TTL ran out."""
    from rq.job import JobStatus

    loops_connection(make_connection, loops)
    for flag, name, enqueue in ((send_job_marker(), "high", lambda: request_sending(1)),
                                (drain_job_marker(), "default", enqueue_drain)):
        queue = Queue(queue_name(name), connection=redis)
        assert enqueue()
        assert not enqueue()  # waiting in its queue: it will claim after any later commit
        assert queue.count == 1
        job, _ = Queue.dequeue_any([queue], None, connection=redis)  # what a worker does first...
        assert job.get_status() == JobStatus.QUEUED and redis.exists(flag)  # ...and dies here
        assert enqueue()
        assert queue.count == 1 and queue.jobs[0].id != job.id
        popped, _ = Queue.dequeue_any([queue], None, connection=redis)
        popped.set_status(JobStatus.STARTED)  # started; killed before the job cleared the flag
        queue.intermediate_queue.remove(popped.id)
        assert enqueue()
        assert queue.count == 1 and queue.jobs[0].id not in (job.id, popped.id)
        assert not enqueue()
