"""RQ queues by priority. Jobs are enqueued by dotted name so webapp never imports worker."""
from flask import current_app
from rq import Queue

from .extensions import redis_ext

WEBHOOKS, HIGH, DEFAULT, LOW = "webhooks", "high", "default", "low"
# Workers listen in this order: webhook dispatch jobs (short, they create record runs)
# first, then webhook record runs overtake manual, manual overtakes scheduled.
PRIORITY_ORDER = (WEBHOOKS, HIGH, DEFAULT, LOW)
EXECUTE_RUN = "worker.jobs.execute_run"


def priority_for(run):
    if run.mode == "record":
        return HIGH
    if run.trigger == "schedule":
        return LOW
    return DEFAULT


def queue(name, connection=None):
    return Queue(name, connection=connection or redis_ext.client)


def _execute_run_options(run):
    return dict(
        args=(run.id,),
        job_id=run.rq_job_id,
        timeout=current_app.config["JOB_TIMEOUT_SECONDS"],
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"run {run.id} ({run.mode}, {run.trigger})",
    )


def enqueue_execute_run(run):
    return queue(priority_for(run)).enqueue_call(EXECUTE_RUN, **_execute_run_options(run))


def enqueue_execute_runs(runs):
    """Many runs in one Redis round trip per priority (the webhook dispatcher's batches)."""
    by_priority = {}
    for run in runs:
        by_priority.setdefault(priority_for(run), []).append(run)
    client = redis_ext.client
    with client.pipeline() as pipe:
        for name, batch in by_priority.items():
            target = queue(name, client)
            target.enqueue_many([Queue.prepare_data(EXECUTE_RUN, **_execute_run_options(run)) for run in batch],
                                pipeline=pipe)
        pipe.execute()


def queue_lengths(connection=None):
    return {name: queue(name, connection).count for name in PRIORITY_ORDER}
