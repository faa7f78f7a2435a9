"""Make Redis agree with the job table again (the database row is the source of truth).

requeue_lost: a `queued` run whose RQ job is gone (Redis flushed or restarted, or the job
    failed before it could claim the run, or it waits in a queue of another prefix) is
    enqueued again under its rq_job_id.
reconcile_registries: RQ's StartedJobRegistry still lists the job of a run whose worker
    was killed (RQ would only notice after its own execution TTL); such entries, and queue
    entries for runs that are already finished or moved on to a later attempt, are settled
    so queue lengths and "started" jobs mean what the job table says.

Both are idempotent and safe with several supervisors: a duplicate enqueue costs one no-op
job, because runs.claim() only lets one worker take a queued run.
"""
import logging
from datetime import timedelta

import redis
from flask import current_app
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.registry import StartedJobRegistry, clean_registries
from sqlalchemy import select

from . import runs
from .extensions import db, redis_ext
from .models import QUEUED, RUNNING, TERMINAL_STATUSES, WAITING, Run, utcnow
from .queue import PRIORITY_ORDER, parse_run_job_id, queue, queue_name, run_job_id

log = logging.getLogger(__name__)

# RQ states from which a job will never execute again.
DEAD_JOB_STATUSES = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
QUEUE_SCAN_LIMIT = 10000
WORKER_LOST = "worker_lost"  # the error_class runs.sweep_stale gives a run whose worker vanished


def _fetch(job_id, connection):
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None


def requeue_lost(now=None, grace_seconds=None, connection=None):
    """Re-enqueue queued runs whose RQ job no longer exists or will never run.
    Returns the ids of the runs enqueued again."""
    now = now or utcnow()
    grace = current_app.config["LOST_JOB_GRACE_SECONDS"] if grace_seconds is None else grace_seconds
    connection = connection or redis_ext.client
    rows = db.session.execute(
        select(Run.id, Run.rq_job_id, Run.created_at, Run.heartbeat_at).where(Run.status == QUEUED).order_by(Run.id)
    ).all()
    db.session.rollback()
    # Queued at least since the later of these; a swept run's last heartbeat is older.
    candidates = [(run_id, job_id) for run_id, job_id, created_at, heartbeat_at in rows
                  if max(created_at, heartbeat_at or created_at) <= now - timedelta(seconds=grace)]
    try:
        statuses = _job_statuses([job_id for _, job_id in candidates], connection)
    except redis.RedisError as exc:
        log.warning("requeue_lost: Redis unavailable (%s); queued runs wait for it", type(exc).__name__)
        return []
    requeued = []
    for (run_id, job_id), status in zip(candidates, statuses):
        if status is not None and status not in DEAD_JOB_STATUSES:
            continue  # waiting in its queue, or being picked up right now
        run = db.session.get(Run, run_id)
        if run is None or run.status != QUEUED or run.rq_job_id != job_id:
            db.session.rollback()
            continue  # claimed, cancelled or requeued since we looked
        try:
            job = _fetch(job_id, connection)
            if job is not None:
                job.delete()  # out of the failed/finished registry, so the new job starts clean
        except redis.RedisError:
            db.session.rollback()
            continue
        if runs.enqueue_run(run):
            requeued.append(run_id)
            why = "job missing or in a queue nobody serves" if status is None else f"job {status.value}"
            runs.log_event(run_id, f"re-enqueued: its queue entry was lost ({why})", level="warning", commit=True)
            log.warning("requeue_lost: run=%s job=%s re-enqueued (%s)", run_id, job_id, why)
        db.session.rollback()
    return requeued


def _job_statuses(job_ids, connection):
    """RQ status of each job, in one round trip. None: no such job, or it sits in a queue no
    worker of this install serves (one named before SYNCHUB_REDIS_PREFIX was set or changed)."""
    ours = {queue_name(name) for name in PRIORITY_ORDER}
    return [job.get_status(refresh=False) if job is not None and job.origin in ours else None
            for job in Job.fetch_many(job_ids, connection=connection)]


def reconcile_registries(now=None, grace_seconds=None, connection=None):
    """Settle RQ entries the job table says are over. Returns {"started": n, "queued": n}."""
    now = now or utcnow()
    grace = timedelta(seconds=current_app.config["LOST_JOB_GRACE_SECONDS"] if grace_seconds is None else grace_seconds)
    connection = connection or redis_ext.client
    settled = {"started": 0, "queued": 0}
    try:
        for name in PRIORITY_ORDER:
            q = queue(name, connection)
            clean_registries(q)  # RQ's own expiry handling (abandoned, finished, failed TTLs)
            settled["started"] += _settle_started(StartedJobRegistry(queue=q), now, grace)
            settled["queued"] += _settle_queued(q)
    except redis.RedisError as exc:
        log.warning("reconcile_registries: Redis unavailable (%s)", type(exc).__name__)
    db.session.rollback()
    return settled


def _runs_by_id(run_ids):
    if not run_ids:
        return {}
    rows = db.session.execute(
        select(Run.id, Run.status, Run.attempt, Run.rq_job_id, Run.error_class, Run.finished_at,
               Run.heartbeat_at)
        .where(Run.id.in_(run_ids))
    ).all()
    db.session.rollback()
    return {row.id: row for row in rows}


def _execution_is_over(job_attempt, run, now, grace):
    """Does the job table say the execution of attempt `job_attempt` has ended?"""
    if run is None or run.attempt > job_attempt:
        return True  # deleted, or a later attempt has started
    if run.status == WAITING:  # it gave its attempt back or pauses: no execution goes on
        return run.heartbeat_at is None or run.heartbeat_at < now - grace
    if run.attempt < job_attempt:
        return False  # dequeued, not claimed yet
    swept = run.error_class == WORKER_LOST  # the sweep already judged this attempt's worker dead
    if run.status == QUEUED:
        return swept and run.rq_job_id != run_job_id(run.id, job_attempt)
    if run.status in TERMINAL_STATUSES:
        # Otherwise give a live worker time to finish its own RQ bookkeeping after the row.
        return swept or (run.finished_at is not None and run.finished_at < now - grace)
    return False  # running this attempt


def _settle_started(registry, now, grace):
    entries = registry.get_job_and_execution_ids(cleanup=False)
    parsed = {job_id: parse_run_job_id(job_id) for job_id, _ in entries}
    table = _runs_by_id({run_id for run_id, _ in parsed.values() if run_id is not None})
    settled = 0
    for job_id, execution_id in entries:
        run_id, attempt = parsed[job_id]
        if run_id is None or not _execution_is_over(attempt, table.get(run_id), now, grace):
            continue
        with registry.connection.pipeline() as pipe:
            pipe.zrem(registry.key, f"{job_id}:{execution_id}")
            job = _fetch(job_id, registry.connection)
            if job is not None and job.get_status(refresh=False) == JobStatus.STARTED:
                record_job_failure(job, f"abandoned: synchub run {run_id} attempt {attempt} "
                                        "is over in the job table (its worker was lost)", pipe)
            pipe.execute()
        settled += 1
        log.info("reconcile: started job=%s settled (run %s says its attempt %s is over)", job_id, run_id, attempt)
    return settled


def _settle_queued(q):
    job_ids = q.get_job_ids(0, QUEUE_SCAN_LIMIT - 1)
    parsed = {job_id: parse_run_job_id(job_id) for job_id in job_ids}
    table = _runs_by_id({run_id for run_id, _ in parsed.values() if run_id is not None})
    settled = 0
    for job_id, (run_id, _attempt) in parsed.items():
        if run_id is None:
            continue
        run = table.get(run_id)
        if run is not None and run.status in (QUEUED, RUNNING) and run.rq_job_id == job_id:
            continue
        # Finished, cancelled while queued, deleted, or a leftover of an earlier attempt: a
        # worker would only find nothing to claim.
        job = _fetch(job_id, q.connection)
        if job is not None:
            job.delete()
        else:
            q.remove(job_id)
        settled += 1
        log.info("reconcile: queued job=%s removed (run %s is %s)", job_id, run_id, run.status if run else "gone")
    return settled
