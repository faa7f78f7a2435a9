"""RQ for synchub: names in Redis, job ids, and enqueueing. Jobs are enqueued by dotted
name, so webapp never imports worker.

Everything an install keeps in Redis carries its prefix (REDIS_PREFIX, from
SYNCHUB_REDIS_PREFIX): keys are "<prefix>:<part>:...", queues "<prefix>:<name>", job ids
"<prefix>-<kind>-...". So two installs can share one Redis server: a worker listens only
to its own install's queues, and no job id of one install can be another's.
"""
import re
import uuid

import redis
from flask import current_app
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import String, cast, literal

from .extensions import redis_ext
from . import redis_keys

WEBHOOKS, HIGH, DEFAULT, LOW = "webhooks", "high", "default", "low"
# Workers listen in this order: webhook dispatch jobs (short, they create record runs)
# first, then webhook record runs overtake manual, manual overtakes scheduled.
PRIORITY_ORDER = (WEBHOOKS, HIGH, DEFAULT, LOW)
EXECUTE_RUN = "worker.jobs.execute_run"

_RUN_JOB_TAIL = re.compile(r"(\d+)-(\d+)(?:-d\d+)?")


# -- names -------------------------------------------------------------------------------


def queue_name(name):
    """The RQ queue behind one of the names above: "high" -> "synchub:high"."""
    return redis_keys.key(name)


def queue(name, connection=None):
    """This install's RQ queue `name` (one of WEBHOOKS, HIGH, DEFAULT, LOW)."""
    return Queue(queue_name(name), connection=connection or redis_ext.client)


def queue_lengths(connection=None):
    return {name: queue(name, connection).count for name in PRIORITY_ORDER}


def workers(connection=None):
    """The RQ workers of this install (those listening to one of its queues), by name."""
    client = connection or redis_ext.client
    keys = sorted({key for name in PRIORITY_ORDER for key in Worker.all_keys(queue=queue(name, client))})
    return [worker for worker in (Worker.find_by_key(key, connection=client) for key in keys) if worker is not None]


# -- job ids -----------------------------------------------------------------------------


def job_id(kind):
    """A new, unique job id: "<prefix>-<kind>-<32 hex digits>"."""
    return f"{redis_keys.prefix()}-{kind}-{uuid.uuid4().hex}"


def run_job_id(run_id, attempt, deferrals=0):
    """The job id of attempt `attempt` (1, 2, ...) of run `run_id`. Each queued period of a
    run has its own, so a requeued run never collides with its previous attempt's job; a
    deferred run gives its attempt back and comes back as the same attempt, told apart by
    its number of deferrals ("-d<n>")."""
    return f"{redis_keys.prefix()}-run-{run_id}-{attempt}" + (f"-d{deferrals}" if deferrals else "")


def run_job_id_sql(id_column, attempt=1):
    """run_job_id(id, attempt) as an SQL expression of a runs id column (bulk inserts)."""
    return literal(f"{redis_keys.prefix()}-run-") + cast(id_column, String) + literal(f"-{attempt}")


def parse_run_job_id(value):
    """(run id, attempt) of a run job id of this install; (None, None) for any other id."""
    head = f"{redis_keys.prefix()}-run-"
    if not value or not value.startswith(head):
        return None, None
    match = _RUN_JOB_TAIL.fullmatch(value[len(head):])
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


# -- enqueueing runs ---------------------------------------------------------------------


def priority_for(run):
    if run.mode == "record":
        return HIGH
    if run.trigger == "schedule":
        return LOW
    return DEFAULT


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


# -- one job at a time -------------------------------------------------------------------

# A replacement that keeps losing the race to other callers gives up: they enqueue.
_REPLACE_ATTEMPTS = 3
# RQ states of a job that is not in its queue yet but will be put there.
_WILL_BE_QUEUED = (JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.RATE_LIMITED, JobStatus.READY_TO_ENQUEUE)


def enqueue_unless_pending(marker, queue_name, func, *, marker_ttl, args=(), kind="job", trust_seconds=0.0,
                           grace_seconds=10.0, running_is_pending=False, connection=None, **options):
    """Enqueue `func` on queue `queue_name` (one of WEBHOOKS, HIGH, DEFAULT, LOW) unless the
    job named by the Redis key `marker` is still pending. Returns the new RQ Job, or None
    when the pending job covers the caller.

    The marker holds the id of the job enqueued for it and expires after `marker_ttl`
    seconds. The job calls release(marker) from the moment it is sure to see what every
    caller until then asked for, so that later callers enqueue another job. A marker is
    honoured, and nothing enqueued, when:
      - it is younger than `trust_seconds` (its job is not looked at: a hot path saves two
        round trips, and a job lost meanwhile holds new work back for that long);
      - its job waits in its queue (queued and still in the queue's list), will be put
        there later (deferred, scheduled...), or is running and `running_is_pending`;
      - its job is not written yet and the marker is younger than `grace_seconds` (its
        caller is between setting the marker and enqueueing).
    Otherwise the marker is stale (its job started, finished, failed, was stopped or
    cancelled, vanished, or was taken by a worker that died before starting it): it is
    replaced by a new job's id and that job is enqueued.

    Setting the marker is atomic (SET NX) and so is replacing a stale one (a WATCH/MULTI
    compare-and-set): callers racing on one marker enqueue one job between them. Cost: one
    round trip when the marker is absent (then the enqueue) or trusted; two more to look at
    its job. Redis errors are raised; if the enqueue fails, the marker is removed again.
    `options` go to RQ's Queue.enqueue_call (timeout, result_ttl, description...).
    """
    client = connection or redis_ext.client
    ttl_ms = int(marker_ttl * 1000)
    for _ in range(_REPLACE_ATTEMPTS):
        new_id = job_id(kind)
        if trust_seconds >= marker_ttl:
            # Every live marker is trusted: SET NX alone decides, neither its age nor its job matters.
            created = client.set(marker, new_id, nx=True, px=ttl_ms)
            return _enqueue(client, marker, queue_name, func, args, new_id, options) if created else None
        with client.pipeline(transaction=False) as pipe:
            pipe.set(marker, new_id, nx=True, px=ttl_ms)
            pipe.get(marker)
            pipe.pttl(marker)
            created, current, left_ms = pipe.execute()
        if created:
            return _enqueue(client, marker, queue_name, func, args, new_id, options)
        if current is None:
            continue  # released between the two reads: look again
        age = marker_ttl - left_ms / 1000 if left_ms >= 0 else float("inf")
        if age < trust_seconds or _pending(client, current.decode(), age, grace_seconds, running_is_pending):
            return None
        if _replace(client, marker, current, new_id, ttl_ms):
            return _enqueue(client, marker, queue_name, func, args, new_id, options)
    return None


def release(marker, connection=None):
    """The marker's job has started looking: the next caller of enqueue_unless_pending
    enqueues another job. (A newer job's marker cleared early costs one extra job.)"""
    (connection or redis_ext.client).delete(marker)


def _pending(client, marked_id, age, grace_seconds, running_is_pending):
    """Does the job `marked_id`, named by a marker `age` seconds old, still cover callers?"""
    try:
        job = Job.fetch(marked_id, connection=client)
    except NoSuchJobError:
        return age < grace_seconds
    status = job.get_status(refresh=False)
    if status in (None, JobStatus.CREATED):
        return age < grace_seconds
    if status == JobStatus.QUEUED:
        # Not in its queue's list any more: a worker took it and has not started it, or
        # died before it could (RQ then leaves it "queued" for minutes).
        return job.get_position() is not None
    if status == JobStatus.STARTED:
        return running_is_pending
    return status in _WILL_BE_QUEUED


def _replace(client, marker, seen, new_id, ttl_ms):
    """Point the marker at `new_id` if it still holds `seen`. False when it changed."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(marker)
            if pipe.get(marker) != seen:
                return False
            pipe.multi()
            pipe.set(marker, new_id, px=ttl_ms)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


def _enqueue(client, marker, queue_name, func, args, new_id, options):
    try:
        return queue(queue_name, client).enqueue_call(func, args=args, job_id=new_id, **options)
    except Exception:
        try:
            release(marker, client)
        except redis.RedisError:
            pass  # it expires, or is judged stale once the grace period is over
        raise
