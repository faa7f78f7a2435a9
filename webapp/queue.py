"""RQ queues by priority. Jobs are enqueued by dotted name so webapp never imports worker."""
from flask import current_app
from rq import Queue

from .extensions import redis_ext

HIGH, DEFAULT, LOW = "high", "default", "low"
# Workers listen in this order, so webhook record runs overtake manual, manual overtakes scheduled.
PRIORITY_ORDER = (HIGH, DEFAULT, LOW)
EXECUTE_RUN = "worker.jobs.execute_run"


def priority_for(run):
    if run.mode == "record":
        return HIGH
    if run.trigger == "schedule":
        return LOW
    return DEFAULT


def queue(name, connection=None):
    return Queue(name, connection=connection or redis_ext.client)


def enqueue_execute_run(run):
    return queue(priority_for(run)).enqueue_call(
        EXECUTE_RUN,
        args=(run.id,),
        job_id=run.rq_job_id,
        timeout=current_app.config["JOB_TIMEOUT_SECONDS"],
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"run {run.id} ({run.mode}, {run.trigger})",
    )


def queue_lengths(connection=None):
    return {name: queue(name, connection).count for name in PRIORITY_ORDER}
