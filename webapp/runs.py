"""The job table's rules. Every state change is a conditional UPDATE on the expected
status (and, for a worker, on its attempt number), so a late or zombie worker can never
overwrite a run that finished, was cancelled, or was handed to another worker.

Transitions:
    queued  --claim-->            running
    queued  --cancel-->           cancelled
    running --finish-->           completed | failed | cancelled
    running --retry / sweep-->    queued     (attempts remain; resumes from its checkpoint)
    running --sweep-->            failed     (no heartbeat, attempts used up)
    running --cancel (orphan)-->  cancelled  (no heartbeat: nobody left to notice the flag)
"""
import logging
from dataclasses import dataclass
from typing import NamedTuple
from datetime import timedelta

from flask import current_app
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.exc import IntegrityError

from .connectors.errors import ConfigError
from . import metrics, trigger_policy
from .extensions import db
from .logs import log_context
from .models import (
    ACTIVE_SYNC_WHERE,
    CANCELLED,
    COMPLETED,
    FAILED,
    MODES,
    QUEUED,
    QUEUED_RECORD_WHERE,
    RUNNING,
    TERMINAL_STATUSES,
    TRIGGERS,
    Connection,
    Run,
    RunEvent,
    utcnow,
)
from .queue import enqueue_execute_run, run_job_id, run_job_id_sql

log = logging.getLogger(__name__)

# Triggers that happen without a person asking: a disabled connection refuses them.
AUTOMATIC_TRIGGERS = ("schedule", "event", "webhook")


class TriggerRefused(ConfigError):
    """The trigger is not allowed for this connection (disabled, trigger policy, bad mode)."""


class TriggerOff(TriggerRefused):
    """The connection's trigger policy does not let this trigger start runs
    (webapp/trigger_policy.py): a decision, not a fault. A webhook refused so is "ignored"."""


@dataclass
class TriggerResult:
    run: Run
    created: bool  # False: an active run already existed and is returned instead


def check_trigger(connection, mode, trigger, record_key=None):
    """Raise TriggerRefused when this connection may not start such a run: TriggerOff when
    its trigger policy says no (the one place that decides it, for every trigger)."""
    if mode not in MODES:
        raise TriggerRefused(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if trigger not in TRIGGERS:
        raise TriggerRefused(f"unknown trigger {trigger!r}")
    if mode == "record" and not record_key:
        raise TriggerRefused("a record run needs a record_key")
    if trigger in AUTOMATIC_TRIGGERS and not connection.enabled:
        raise TriggerRefused(f"connection {connection.name!r} is disabled")
    reason = trigger_policy.refusal(connection, trigger)
    if reason is not None:
        raise TriggerOff(reason)


def trigger(
    connection,
    *,
    mode="full",
    params=None,
    trigger="manual",
    requested_by=None,
    streams=None,
    record_key=None,
    max_attempts=None,
    enqueue=True,
):
    """Insert a queued run, or return the active one. Commits. Enqueues after commit.

    The partial unique index decides races: of many concurrent callers (any process, any
    machine) exactly one insert succeeds; the rest read back and return that run.
    """
    check_trigger(connection, mode, trigger, record_key)
    connection_id = connection.id
    config = current_app.config
    for _ in range(20):
        run = Run(
            connection_id=connection_id,
            mode=mode,
            params=params or {},
            trigger=trigger,
            requested_by=requested_by,
            streams=list(streams or []),
            record_key=record_key if mode == "record" else None,
            status=QUEUED,
            attempt=0,
            max_attempts=max_attempts or config["RUN_MAX_ATTEMPTS"],
        )
        try:
            db.session.add(run)
            db.session.flush()
            run.rq_job_id = run_job_id(run.id, 1)
            db.session.add(RunEvent(run_id=run.id, message=f"queued by {trigger}" + (f" ({requested_by})" if requested_by else "")))
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            existing = _active_for(connection_id, mode, record_key)
            if existing is not None:
                return TriggerResult(existing, False)
            continue  # it finished between our insert and our read: try again
        announce_created(connection, [run])
        if enqueue:
            with log_context(run_id=run.id, connection=connection.name, trigger=trigger, mode=mode):
                enqueue_run(run)
        return TriggerResult(run, True)
    raise RuntimeError(f"could not insert or find an active run for connection {connection_id}")


class QueuedRun(NamedTuple):
    """What enqueueing and announcing a run need, read before its transaction commits (an
    ORM Run would be expired by the commit and re-read, one SELECT per run)."""

    id: int
    rq_job_id: str
    mode: str
    trigger: str


def add_record_runs(connection, events, *, trigger="webhook", requested_by=None):
    """Queued record runs for many (stream, record_id, deleted) events of one connection,
    added to the caller's transaction (not committed, not enqueued): the webhook
    dispatcher settles a batch of deliveries and their runs in one commit.

    Returns (a QueuedRun per event, in order; the QueuedRuns created here). A record that
    already has a queued run gets that run, as runs.trigger would give it. If another
    transaction queues the same record meanwhile, the INSERT raises IntegrityError (the
    partial unique index) and the caller retries its whole transaction. Core statements,
    a few per batch whatever its size: this is the dispatcher's hot path.
    """
    table, events_table = Run.__table__, RunEvent.__table__
    keys = [f"{stream}:{record_id}" for stream, record_id, _deleted in events]
    for key in keys:
        check_trigger(connection, "record", trigger, key)

    by_key = ({row.record_key: QueuedRun(row.id, row.rq_job_id, "record", trigger)
               for row in queued_record_runs(connection.id, set(keys))} if keys else {})
    new = {}
    for key, (stream, record_id, deleted) in zip(keys, events):
        if key not in by_key and key not in new:
            new[key] = dict(connection_id=connection.id, mode="record", record_key=key, trigger=trigger,
                            params={"stream": stream, "record_id": str(record_id), "deleted": bool(deleted)},
                            streams=[stream], requested_by=requested_by, status=QUEUED, attempt=0,
                            max_attempts=current_app.config["RUN_MAX_ATTEMPTS"], created_at=utcnow())
    created = []
    if new:
        fresh = _insert_runs(new, trigger)
        note = f"queued by {trigger}" + (f" ({requested_by})" if requested_by else "")
        db.session.execute(events_table.insert(), [{"run_id": run.id, "message": note} for run in fresh.values()])
        created = list(fresh.values())
        by_key.update(fresh)
    return [by_key[key] for key in keys], created


def _insert_runs(new, trigger):
    """{record key: QueuedRun} for the rows of `new` ({record key: row}), inserted with
    their RQ job ids (queue.run_job_id(run id, 1)). PostgreSQL hands out the ids first, so each
    row goes in complete; SQLite has no sequence to ask: the rows go in, then are read
    back and given their job ids."""
    table = Run.__table__
    if db.session.get_bind().dialect.name == "postgresql":
        ids = db.session.execute(text("SELECT nextval(pg_get_serial_sequence('runs', 'id')) "
                                      "FROM generate_series(1, :n)"), {"n": len(new)}).scalars().all()
        for run_id, row in zip(ids, new.values()):
            row.update(id=run_id, rq_job_id=run_job_id(run_id, 1))
        db.session.execute(table.insert(), list(new.values()))
        return {key: QueuedRun(row["id"], row["rq_job_id"], "record", trigger) for key, row in new.items()}
    db.session.execute(table.insert(), list(new.values()))
    rows = queued_record_runs(next(iter(new.values()))["connection_id"], list(new))
    # The same id as run_job_id(run_id, 1), computed by the database for the whole batch.
    db.session.execute(update(table).where(table.c.id.in_([row.id for row in rows]))
                       .values(rq_job_id=run_job_id_sql(table.c.id, 1)))
    return {row.record_key: QueuedRun(row.id, run_job_id(row.id, 1), "record", trigger) for row in rows}


def announce_created(connection, created):
    """Count and log runs after the transaction that created them has committed."""
    for run in created:
        metrics.inc("runs_started", connection=connection.name, trigger=run.trigger)
        with log_context(run_id=run.id, connection=connection.name, trigger=run.trigger, mode=run.mode):
            log.info("run %s queued (%s %s)", run.id, run.mode, run.trigger)


def queued_record_runs(connection_id, record_keys):
    """Rows (id, record_key, rq_job_id) of the queued record runs of these records, read
    through the partial unique index uq_runs_one_queued_record. The dispatcher asks this
    for every batch. Its predicate is spelled out literally, not bound (neither database
    can prove a partial index's predicate from parameters), and SQLite is told which index
    to take: without statistics it preferred the status index for an IN list, a scan of
    every queued run (docs/PERFORMANCE.md, "Webhook ingest")."""
    hint = "INDEXED BY uq_runs_one_queued_record" if db.session.get_bind().dialect.name == "sqlite" else ""
    statement = text(f"SELECT id, record_key, rq_job_id FROM runs {hint} WHERE connection_id = :connection_id "
                     f"AND record_key IN :record_keys AND {QUEUED_RECORD_WHERE}")
    return db.session.execute(statement.bindparams(bindparam("record_keys", expanding=True)),
                              {"connection_id": connection_id, "record_keys": list(record_keys)}).all()


def _active_for(connection_id, mode, record_key):
    # The partial indexes' predicates written literally, so that they can be used (models.py).
    query = select(Run).where(Run.connection_id == connection_id)
    if mode == "record":
        query = query.where(Run.record_key == record_key, text(QUEUED_RECORD_WHERE))
    else:
        query = query.where(text(ACTIVE_SYNC_WHERE))
    return db.session.execute(query).scalars().first()


def active_run(connection_id):
    return _active_for(connection_id, "full", None)


def enqueue_run(run):
    """Hand a queued run to RQ. If Redis is down the row stays queued and the supervisor's
    sweep (requeue_lost) enqueues it later: nothing is lost, only delayed."""
    try:
        enqueue_execute_run(run)
        return True
    except Exception as exc:  # redis errors of any kind: the row is the source of truth
        log.warning("run %s stays queued, enqueue failed: %s", run.id, type(exc).__name__)
        return False


def claim(run_id, worker_name=None):
    """queued -> running for one worker. Returns the attempt number, or None if not ours."""
    now = utcnow()
    result = db.session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED, Run.cancel_requested.is_(False))
        .values(
            status=RUNNING,
            attempt=Run.attempt + 1,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            worker_name=worker_name,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        # A queued run whose cancel was requested in the same instant: settle it here.
        _settle_cancel_requested_queued(run_id)
        return None
    attempt = db.session.execute(select(Run.attempt).where(Run.id == run_id)).scalar_one()
    db.session.add(RunEvent(run_id=run_id, message=f"attempt {attempt} started" + (f" on {worker_name}" if worker_name else "")))
    db.session.commit()
    return attempt


def _settle_cancel_requested_queued(run_id):
    result = db.session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED, Run.cancel_requested.is_(True))
        .values(status=CANCELLED, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return result.rowcount == 1


def owned(run_id, attempt):
    """The WHERE clause of every write a worker makes: the run is still running *its* attempt."""
    return (Run.id == run_id, Run.status == RUNNING, Run.attempt == attempt)


def record_page(run_id, attempt, *, checkpoint, counts, processed, total, phase):
    """Inside the page's transaction (no commit): checkpoint, counters and progress.
    Returns (still_owned, cancel_requested). If not owned the caller must roll back."""
    values = {Run.checkpoint: checkpoint, Run.processed: processed, Run.total: total,
              Run.phase: phase, Run.heartbeat_at: utcnow()}
    for name, delta in counts.items():
        if delta:
            values[getattr(Run, name)] = getattr(Run, name) + delta
    # RETURNING reads the cancel flag in the same statement: one round trip per page.
    row = db.session.execute(
        update(Run).where(*owned(run_id, attempt)).values(values).returning(Run.cancel_requested)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return False, False
    return True, bool(row[0])


def finish(run_id, attempt, status, *, error_class=None, error_message=None, counts=None, commit=True):
    """running -> completed/failed/cancelled, only if this attempt still owns the run."""
    assert status in TERMINAL_STATUSES
    values = {Run.status: status, Run.finished_at: utcnow(), Run.error_class: error_class,
              Run.error_message: error_message}
    if status == COMPLETED:
        values[Run.phase] = "done"
    for name, delta in (counts or {}).items():
        if delta:
            values[getattr(Run, name)] = getattr(Run, name) + delta
    result = db.session.execute(
        update(Run).where(*owned(run_id, attempt)).values(values).execution_options(synchronize_session=False)
    )
    ok = result.rowcount == 1
    if ok:
        db.session.add(RunEvent(run_id=run_id, level="error" if status == FAILED else "info",
                                message=f"{status}" + (f": {error_message}" if error_message else "")))
    if commit:
        if ok:
            db.session.commit()
        else:
            db.session.rollback()
    if ok:
        count_finished(run_id, status)
    return ok


def count_finished(run_id, status):
    """Metrics for a run that just reached a terminal status (any path: worker, sweep, cancel)."""
    row = db.session.execute(select(Connection.name, Run.trigger, Run.started_at, Run.finished_at)
                             .join(Connection, Run.connection_id == Connection.id).where(Run.id == run_id)).first()
    if row is None:
        return
    name, trigger, started_at, finished_at = row
    metrics.inc("runs_finished", connection=name, status=status, trigger=trigger)
    if started_at and finished_at:
        metrics.observe("run_duration_seconds", (finished_at - started_at).total_seconds(), connection=name, status=status)


def retry_later(run_id, attempt, *, error_class, error_message):
    """running -> queued for another attempt (resuming from the checkpoint), or -> failed
    when attempts are used up. Returns the new status, or None if the run wasn't ours."""
    run = db.session.get(Run, run_id)
    db.session.expire(run)
    if run.attempt != attempt or run.status != RUNNING:
        db.session.rollback()
        return None
    if attempt >= run.max_attempts:
        ok = finish(run_id, attempt, FAILED, error_class=error_class,
                    error_message=f"{error_message} (gave up after {attempt} attempts)")
        return FAILED if ok else None
    result = db.session.execute(
        update(Run).where(*owned(run_id, attempt))
        .values(status=QUEUED, error_class=error_class, error_message=error_message,
                rq_job_id=run_job_id(run_id, attempt + 1))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        return None
    db.session.add(RunEvent(run_id=run_id, level="warning",
                            message=f"attempt {attempt} failed ({error_class}: {error_message}); will resume from checkpoint"))
    db.session.commit()
    enqueue_run(db.session.get(Run, run_id))
    return QUEUED


def cancel(run_id, requested_by=None, now=None):
    """Cancel a run in any active state. Returns the run's status afterwards.

    queued: cancelled at once (it will never start). running: the flag is set and the
    worker stops at its next page boundary. running with no heartbeat for longer than
    the stale threshold: the worker is gone, so the row is cancelled directly.
    """
    now = now or utcnow()
    who = f" by {requested_by}" if requested_by else ""
    result = db.session.execute(
        update(Run).where(Run.id == run_id, Run.status == QUEUED)
        .values(status=CANCELLED, cancel_requested=True, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.add(RunEvent(run_id=run_id, message=f"cancelled while queued{who}"))
        db.session.commit()
        count_finished(run_id, CANCELLED)
        return CANCELLED
    stale_before = now - timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"])
    result = db.session.execute(
        update(Run).where(Run.id == run_id, Run.status == RUNNING, Run.heartbeat_at < stale_before)
        .values(status=CANCELLED, cancel_requested=True, finished_at=now,
                error_message="cancelled; the worker had stopped sending heartbeats")
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.add(RunEvent(run_id=run_id, message=f"cancelled{who}; its worker was gone"))
        db.session.commit()
        count_finished(run_id, CANCELLED)
        return CANCELLED
    result = db.session.execute(
        update(Run).where(Run.id == run_id, Run.status == RUNNING, Run.cancel_requested.is_(False))
        .values(cancel_requested=True).execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.add(RunEvent(run_id=run_id, message=f"cancel requested{who}; stopping at the next page"))
    db.session.commit()
    status = db.session.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()
    if status is None:
        raise LookupError(f"no run {run_id}")
    return status


def running_heartbeats():
    """[(run_id, heartbeat_at)] of every running run: what a supervisor watches."""
    rows = db.session.execute(select(Run.id, Run.heartbeat_at).where(Run.status == RUNNING)).all()
    db.session.rollback()
    return [tuple(row) for row in rows]


def sweep_stale(now=None, stale_after=None, candidates=None):
    """Settle running runs whose worker stopped sending heartbeats. Requeue to resume from
    the checkpoint while attempts remain, else fail with the reason. Returns
    [(run_id, new_status)]. Safe to run from several processes at once: each change is
    conditional on the exact attempt and heartbeat that was judged stale.

    Which runs are stale: `candidates` [(run_id, heartbeat_at)] when the caller judged it
    (the supervisor does, by how long a heartbeat stayed unchanged on its own monotonic
    clock, immune to wall-clock jumps and skew); otherwise heartbeats older than
    `now - stale_after` by the wall clock."""
    now = now or utcnow()
    query = select(Run.id, Run.attempt, Run.max_attempts, Run.heartbeat_at, Run.cancel_requested).where(
        Run.status == RUNNING)
    if candidates is None:
        stale_after = current_app.config["STALE_AFTER_SECONDS"] if stale_after is None else stale_after
        query = query.where(Run.heartbeat_at < now - timedelta(seconds=stale_after))
    else:
        judged = dict(candidates)
        if not judged:
            return []
        query = query.where(Run.id.in_(list(judged)))
    stale = db.session.execute(query).all()
    db.session.rollback()
    if candidates is not None:
        stale = [row for row in stale if row.heartbeat_at == judged[row.id]]
    outcomes = []
    for run_id, attempt, max_attempts, beat, cancel_requested in stale:
        where = (*owned(run_id, attempt), Run.heartbeat_at == beat)
        since = beat.isoformat(timespec="seconds") + "Z"
        if cancel_requested:
            values = dict(status=CANCELLED, finished_at=now, error_message=f"cancelled; worker lost (no heartbeat since {since})")
            new_status, message = CANCELLED, "cancelled: its worker was lost"
        elif attempt < max_attempts:
            values = dict(status=QUEUED, rq_job_id=run_job_id(run_id, attempt + 1), error_class="worker_lost",
                          error_message=f"worker lost: no heartbeat since {since}")
            new_status, message = QUEUED, f"worker lost (no heartbeat since {since}); requeued to resume from checkpoint"
        else:
            values = dict(status=FAILED, finished_at=now, error_class="worker_lost",
                          error_message=f"worker lost: no heartbeat since {since}; no attempts left ({attempt}/{max_attempts})")
            new_status, message = FAILED, values["error_message"]
        result = db.session.execute(update(Run).where(*where).values(**values).execution_options(synchronize_session=False))
        if result.rowcount != 1:
            db.session.rollback()
            continue
        db.session.add(RunEvent(run_id=run_id, level="warning", message=message))
        db.session.commit()
        metrics.inc("stale_runs_swept", action=new_status)
        if new_status != QUEUED:
            count_finished(run_id, new_status)
        with log_context(run_id=run_id, attempt=attempt):
            log.warning("run %s: %s", run_id, message)
        outcomes.append((run_id, new_status))
        if new_status == QUEUED:
            enqueue_run(db.session.get(Run, run_id))
    return outcomes


def log_event(run_id, message, *, level="info", kind="log", stream=None, record_key=None, commit=False):
    db.session.add(RunEvent(run_id=run_id, message=message, level=level, kind=kind, stream=stream, record_key=record_key))
    if commit:
        db.session.commit()


def get_connection(name_or_id):
    """Look a connection up by id or by name; a clear error otherwise."""
    query = select(Connection)
    if str(name_or_id).isdigit():
        query = query.where(Connection.id == int(name_or_id))
    else:
        query = query.where(Connection.name == str(name_or_id))
    connection = db.session.execute(query).scalar_one_or_none()
    if connection is None:
        raise LookupError(f"no connection {name_or_id!r}")
    return connection
