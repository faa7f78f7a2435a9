"""RQ entry points. Each runs inside the Flask app context (pushed by `python -m worker`,
or created here when the job is run by a bare `rq worker`)."""
from flask import has_app_context
from rq import get_current_job

_app = None


def _app_context():
    global _app
    if _app is None:
        from webapp import create_app

        _app = create_app()
    return _app.app_context()


def execute_run(run_id):
    if not has_app_context():
        with _app_context():
            return execute_run(run_id)
    from webapp.extensions import redis_ext
    from webapp.logs import log_context

    from .engine import execute_run as run_engine

    job = get_current_job()
    worker_name = job.worker_name if job is not None else None
    from webapp import metrics

    try:
        with log_context(rq_job_id=job.id if job is not None else None, worker=worker_name):
            return run_engine(run_id, redis_client=redis_ext.client, worker_name=worker_name)
    finally:
        metrics.flush()  # a work horse ends with os._exit: atexit hooks never run


def deliver_event(event_id):
    """The outbox's real-time attempt for one event, then whatever else is due."""
    if not has_app_context():
        with _app_context():
            return deliver_event(event_id)
    from webapp.extensions import redis_ext

    from .outbox_sender import run_send_event_job

    job = get_current_job()
    return run_send_event_job(event_id, redis_client=redis_ext.client, worker_name=job.worker_name if job else None)


def drain_outbox():
    """Deliver every outbox event that is due (the supervisor and the cron endpoint enqueue this)."""
    if not has_app_context():
        with _app_context():
            return drain_outbox()
    from webapp.extensions import redis_ext

    from .outbox_sender import run_send_due_job

    job = get_current_job()
    return run_send_due_job(redis_client=redis_ext.client, worker_name=job.worker_name if job else None)


def dispatch_webhooks():
    """Turn stored webhook deliveries into record runs, in batches (webapp/webhooks/dispatch.py)."""
    if not has_app_context():
        with _app_context():
            return dispatch_webhooks()
    from webapp.webhooks.dispatch import run_dispatch_job

    return run_dispatch_job()
