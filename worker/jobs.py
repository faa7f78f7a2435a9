"""RQ entry points, enqueued by dotted name from webapp/ and scheduler/. Plain functions:
the worker (worker/worker.py) runs each in the app context and flushes metrics after it.
The domain rules they apply live in webapp/; what carries them out lives here in worker/.
"""
import time

from rq import get_current_job

from webapp.extensions import redis_ext
from webapp.logs import log_context
from webapp.webhooks import dispatch

from .outbox_sender import run_send_due_job, run_send_event_job
from .engine import execute_run as run_engine


def _worker_name():
    job = get_current_job()
    return job.worker_name if job is not None else None


def execute_run(run_id):
    job = get_current_job()
    worker_name = job.worker_name if job is not None else None
    with log_context(rq_job_id=job.id if job is not None else None, worker=worker_name):
        return run_engine(run_id, redis_client=redis_ext.client, worker_name=worker_name)


def send_outbox_event(event_id):
    """The outbox's real-time attempt for one event, then whatever else is due."""
    return run_send_event_job(event_id, redis_client=redis_ext.client, worker_name=_worker_name())


def send_due_outbox_events():
    """Send every outbox event that is due (the periodic drain: the supervisor and the cron endpoint)."""
    return run_send_due_job(redis_client=redis_ext.client, worker_name=_worker_name())


def dispatch_webhooks():
    """Turn stored webhook deliveries into record runs (webapp/webhooks/dispatch.py) until
    none is left; then release the kick marker, wait out the web processes' debounce and
    look once more: a request that skipped asking for a dispatcher asked before the
    release, so this last look comes after its commit (see dispatch.kick)."""
    total = dispatch.dispatch_until_empty()
    dispatch.release_kick()
    time.sleep(dispatch.last_look_delay())
    return total + dispatch.dispatch_until_empty()
