"""The job table's rules. Every state change is a conditional UPDATE on the expected
status (and, for a worker, on its attempt number), so a late or zombie worker can never
overwrite a run that finished, was cancelled, or was handed to another worker.

Transitions:
    (new)   --trigger-->          queued, or waiting (a follow-up of the active sync)
    waiting --promote-->          queued     (the active sync ended, or not_before has come)
    waiting --cancel-->           cancelled
    queued  --claim-->            running
    queued  --cancel-->           cancelled
    running --finish-->           completed | failed | cancelled
    running --retry / sweep-->    queued     (attempts remain; resumes from its checkpoint)
    running --retry with pause--> waiting    (not_before: backoff between attempts)
    running --defer-->            waiting    (not_before: a long Retry-After; the attempt is given back)
    running --sweep-->            failed     (no heartbeat, attempts used up)
    running --cancel (orphan)-->  cancelled  (no heartbeat: nobody left to notice the flag)

Each UPDATE that makes a run completed, failed or cancelled adds it to the statistics'
roll-ups in its own transaction, only when it matched (webapp/rollups.py): exactly once.
"""
import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import NamedTuple
from datetime import timedelta

from flask import current_app
from sqlalchemy import bindparam, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from .connectors.errors import ConfigError
from . import connection_issues, metrics, rollups, trigger_policy
from .extensions import db
from .logs import log_context
from .models import (
    ACTIVE_SYNC_WHERE,
    CANCELLED,
    COMPLETED,
    FAILED,
    FOLLOW_UP_WHERE,
    MODES,
    QUEUED,
    QUEUED_RECORD_WHERE,
    RUNNING,
    TERMINAL_STATUSES,
    TRIGGERS,
    WAITING,
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


TRIGGER_OUTCOMES = ("queued", "follow_up", "active", "coalesced", "skipped")


@dataclass
class TriggerResult:
    """What a trigger did. `outcome`:
        queued     a new run, queued to start now
        follow_up  a new waiting run that starts when `active` (another sync) ends
        active     the active run has these parameters: it is returned, nothing new
        coalesced  an identical follow-up (or deferred run) was already waiting: it is returned
        skipped    a scheduled slot met an active run and the overlap policy says skip
    """

    run: Run
    created: bool  # a new row was inserted
    outcome: str = "queued"
    active: Run | None = None  # the connection's active sync when it was not `run` itself


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
    paused = connection_issues.refusal(connection, trigger)
    if paused is not None:
        raise TriggerRefused(paused)


def params_key(mode, params, streams):
    """What makes two syncs the same run: mode, parameters (empty values dropped, so an
    empty date field is no parameter) and the set of streams. A stable digest, so the
    database can keep one waiting follow-up per connection and key."""
    params = {k: v for k, v in (params or {}).items() if v not in (None, "", [], {})}
    canonical = json.dumps({"mode": mode, "params": params, "streams": sorted(streams or [])},
                           sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()  # a dedupe key, not a secret


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
    """Start a sync, or say why none was needed. Commits; enqueues after the commit.

    Every trigger counts (docs/ARCHITECTURE.md, "Follow-up runs"): one that meets an active
    sync with the same parameters gets that run; with other parameters it gets a waiting
    follow-up, which is queued when the active sync ends. A scheduled slot that meets an
    active sync follows the overlap policy (webapp/trigger_policy.py): skipped and logged,
    or one buffered follow-up. Partial unique indexes decide every race, on any
    number of processes and machines: one active sync per connection, one waiting
    follow-up per connection and parameter set, one queued run per record.
    """
    check_trigger(connection, mode, trigger, record_key)
    connection_id = connection.id
    record_key = record_key if mode == "record" else None
    key = None if mode == "record" else params_key(mode, params, streams)
    fields = dict(connection_id=connection_id, mode=mode, params=params or {}, trigger=trigger,
                  requested_by=requested_by, streams=list(streams or []), record_key=record_key, params_key=key,
                  attempt=0, max_attempts=max_attempts or current_app.config["RUN_MAX_ATTEMPTS"])
    note = f"queued by {trigger}" + (f" ({requested_by})" if requested_by else "")
    for _ in range(20):
        waiting = _follow_up_for(connection_id, key) if key else None
        if waiting is not None:
            return TriggerResult(waiting, False, "coalesced", active_run(connection_id))
        run = _insert(Run(status=QUEUED, **fields), note)
        if run is None:
            existing = _active_for(connection_id, mode, record_key)
            if existing is None:
                continue  # it finished between our insert and our read: try again
            if trigger == "schedule" and not trigger_policy.follows_up(connection.settings, trigger):
                _note_skipped(existing, requested_by or trigger)
                return TriggerResult(existing, False, "skipped")
            # A buffered slot follows up even a sync like itself: the data has moved on since
            # the active one started (Temporal's buffer_one).
            if mode == "record" or (trigger != "schedule" and (existing.params_key or _key_of(existing)) == key):
                return TriggerResult(existing, False, "active")
            run = _insert(Run(status=WAITING, **fields), f"waiting for run {existing.id} to end (asked for by "
                                                         f"{trigger}{f', {requested_by}' if requested_by else ''})")
            if run is None:
                continue  # an identical follow-up won the race: the next turn returns it
            announce_created(connection, [run])
            # The active run may have ended before our insert was visible to its promotion.
            promote_waiting(connection_id=connection_id)
            db.session.refresh(run)
            if run.status == WAITING:
                return TriggerResult(run, True, "follow_up", existing)
            return TriggerResult(run, True)
        announce_created(connection, [run])
        if enqueue:
            with log_context(run_id=run.id, connection=connection.name, trigger=trigger, mode=mode):
                enqueue_run(run)
        return TriggerResult(run, True)
    raise RuntimeError(f"could not insert or find an active run for connection {connection_id}")


def _insert(run, note):
    """Insert `run` with its first job id and log line, committed; None when a unique index
    refused it (the transaction is rolled back)."""
    try:
        db.session.add(run)
        db.session.flush()
        run.rq_job_id = run_job_id(run.id, 1)
        db.session.add(RunEvent(run_id=run.id, message=note))
        db.session.commit()
        return run
    except IntegrityError:
        db.session.rollback()
        return None


def _key_of(run):
    return params_key(run.mode, run.params, run.streams)


def _note_skipped(active, who):
    """Overlap policy skip: the slot is logged on the history of the run it met."""
    db.session.add(RunEvent(run_id=active.id, message=skipped_slot_note(who)))
    db.session.commit()


def skipped_slot_note(who):
    """The line a skipped slot leaves on the active run's history (also batches.py's)."""
    return f"a scheduled slot was skipped: this run was still active (overlap policy: skip; {who})"


def _follow_up_for(connection_id, key):
    # FOLLOW_UP_WHERE written literally, so the partial index serves it (models.py).
    return db.session.execute(select(Run).where(Run.connection_id == connection_id, Run.params_key == key,
                                                text(FOLLOW_UP_WHERE))).scalars().first()


def promote_waiting(now=None, connection_id=None):
    """Queue the waiting runs that may start: follow-ups of connections with no active
    sync (oldest first, one per connection: it becomes the active sync), and deferred runs
    whose `not_before` has come. Returns the ids queued. Every change is conditional
    (still waiting, still due) and the one-active-sync index refuses a second active run,
    so any number of callers at once queue each run exactly once. Called when a run ends
    and on every supervisor tick (webapp/periodic.py)."""
    now = now or utcnow()
    query = (select(Run.id, Run.connection_id, Run.mode, Run.not_before)
             .where(Run.status == WAITING, or_(Run.not_before.is_(None), Run.not_before <= now))
             .order_by(Run.not_before.is_(None), Run.id))  # deferred ones first: they hold their place
    if connection_id is not None:
        query = query.where(Run.connection_id == connection_id)
    rows = db.session.execute(query).all()
    db.session.rollback()
    promoted, blocked = [], set()
    for run_id, run_connection_id, mode, not_before in rows:
        if not_before is None and run_connection_id in blocked:
            continue
        due = Run.not_before.is_(None) if not_before is None else Run.not_before <= now
        try:
            result = db.session.execute(update(Run).where(Run.id == run_id, Run.status == WAITING, due)
                                        .values(status=QUEUED, not_before=None)
                                        .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                db.session.rollback()
                continue
            db.session.add(RunEvent(run_id=run_id, message="queued: its wait is over" if not_before
                                    else "queued: the sync it followed has ended"))
            db.session.commit()
        except IntegrityError:  # another sync of the connection is active: this one keeps waiting
            db.session.rollback()
            blocked.add(run_connection_id)
            continue
        if mode != "record":
            blocked.add(run_connection_id)
        promoted.append(run_id)
        enqueue_run(db.session.get(Run, run_id))
    return promoted


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
        fresh = insert_record_runs(new, trigger)
        note = f"queued by {trigger}" + (f" ({requested_by})" if requested_by else "")
        db.session.execute(events_table.insert(), [{"run_id": run.id, "message": note} for run in fresh.values()])
        created = list(fresh.values())
        by_key.update(fresh)
    return [by_key[key] for key in keys], created


def insert_record_runs(new, trigger):
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
    statement = text(f"SELECT id, record_key, rq_job_id FROM runs {hint} WHERE connection_id = :connection_id "  # noqa: S608  constants only; values are bound
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


def insert_queued_syncs(rows):
    """Queued sync runs (not record runs) of many connections, one each, in one INSERT,
    added to the caller's transaction (not committed, not enqueued, no events): the
    supervisor fires its due slots so (webapp/schedules/batches.py). `rows` are the runs'
    column values. A connection whose active sync appeared meanwhile is left out by the
    one-active-sync index (ON CONFLICT DO NOTHING) instead of failing the statement.
    Returns {connection_id: QueuedRun} of the runs inserted, job ids set
    (queue.run_job_id(run id, 1))."""
    table = Run.__table__
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        # Ids first, so each row goes in with its job id (an id given to a row left out is a gap).
        ids = db.session.execute(text("SELECT nextval(pg_get_serial_sequence('runs', 'id')) "
                                      "FROM generate_series(1, :n)"), {"n": len(rows)}).scalars().all()
        rows = [dict(row, id=run_id, rq_job_id=run_job_id(run_id, 1)) for run_id, row in zip(ids, rows)]
    else:
        from sqlalchemy.dialects.sqlite import insert
    # Parameters as a list, not .values(rows): SQLAlchemy's "insertmanyvalues" renders the
    # multi-row INSERT from one cached compilation (a .values() list is compiled afresh).
    inserted = db.session.execute(insert(table).on_conflict_do_nothing()
                                  .returning(table.c.id, table.c.connection_id, table.c.mode, table.c.trigger),
                                  rows).all()
    if dialect != "postgresql" and inserted:
        # The same id as run_job_id(run_id, 1), computed by the database for the whole batch.
        db.session.execute(update(table).where(table.c.id.in_([row.id for row in inserted]))
                           .values(rq_job_id=run_job_id_sql(table.c.id, 1)))
    return {row.connection_id: QueuedRun(row.id, run_job_id(row.id, 1), row.mode, row.trigger) for row in inserted}


def claim(run_id, worker_name=None):
    """queued -> running for one worker. Returns the attempt number, or None if not ours."""
    now = utcnow()
    # RETURNING gives the new attempt in the same statement (a no-op run's statements are
    # its cost: docs/PERFORMANCE.md, "Cheap runs").
    attempt = db.session.execute(
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
        .returning(Run.attempt)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if attempt is None:
        db.session.rollback()
        # A queued run whose cancel was requested in the same instant: settle it here.
        _settle_cancel_requested_queued(run_id)
        return None
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
    if result.rowcount == 1:
        rollups.add_finished(run_id)
    db.session.commit()
    if result.rowcount == 1:
        ended(run_id, CANCELLED)
    return result.rowcount == 1


def owned(run_id, attempt):
    """The WHERE clause of every write a worker makes: the run is still running *its* attempt."""
    return (Run.id == run_id, Run.status == RUNNING, Run.attempt == attempt)


def record_page(run_id, attempt, *, checkpoint, counts, processed, total, phase, stream_counters=None, waited=0.0):
    """Inside the page's transaction (no commit): checkpoint, counters (the run's, and each
    stream's as a whole) and progress. Returns (still_owned, cancel_requested). If not owned
    the caller must roll back."""
    # Every counter named is written, even with 0: one statement shape per call site, so
    # the worker's rehearsal compiles it once for every page (worker/rehearsal.py).
    statement = _page_update(tuple(counts), stream_counters is not None, bool(waited))
    params = {"p_run_id": run_id, "p_attempt": attempt, "p_checkpoint": checkpoint, "p_processed": processed,
              "p_total": total, "p_phase": phase, "p_heartbeat_at": utcnow(), "p_stream_counters": stream_counters,
              "p_waited": float(waited)}
    params.update({f"p_add_{name}": delta for name, delta in counts.items()})
    # RETURNING reads the cancel flag in the same statement: one round trip per page.
    row = db.session.execute(statement, params).first()
    if row is None:
        return False, False
    return True, bool(row[0])


@functools.lru_cache(maxsize=32)
def _page_update(counter_names, with_stream_counters, with_waited):
    """record_page's conditional UPDATE for one shape, built once with every value a bound
    parameter: reusing the statement object keeps its cache key, so a page no longer builds
    and keys some fifteen SQL expressions (docs/PERFORMANCE.md, "Engine throughput")."""
    t = Run.__table__
    values = {t.c.checkpoint: bindparam("p_checkpoint", type_=t.c.checkpoint.type),
              t.c.processed: bindparam("p_processed", type_=t.c.processed.type),
              t.c.total: bindparam("p_total", type_=t.c.total.type),
              t.c.phase: bindparam("p_phase", type_=t.c.phase.type),
              t.c.heartbeat_at: bindparam("p_heartbeat_at", type_=t.c.heartbeat_at.type)}
    if with_stream_counters:
        values[t.c.stream_counters] = bindparam("p_stream_counters", type_=t.c.stream_counters.type)
    for name in counter_names:
        values[t.c[name]] = t.c[name] + bindparam(f"p_add_{name}", type_=t.c[name].type)
    if with_waited:
        waited = t.c.rate_limit_wait_seconds
        values[waited] = waited + bindparam("p_waited", type_=waited.type)
    # owned(), with the run and attempt bound.
    return (update(t).where(t.c.id == bindparam("p_run_id"), t.c.status == RUNNING,
                            t.c.attempt == bindparam("p_attempt"))
            .values(values).returning(t.c.cancel_requested))


def finish(run_id, attempt, status, *, error_class=None, error_message=None, counts=None, commit=True,
           stream_counters=None, waited=0.0, connection_health=None, connection_name=None):
    """running -> completed/failed/cancelled, only if this attempt still owns the run; the
    run is added to the roll-ups in the same transaction (webapp/rollups.py).
    `connection_health`: (connection id, health, message), written in the same transaction
    when the run is finished (one commit fewer than a transaction of its own)."""
    if status not in TERMINAL_STATUSES:  # not an assert: `python -O` would skip it
        raise ValueError(f"{status!r} is not a terminal status")
    values = {Run.status: status, Run.finished_at: utcnow(), Run.error_class: error_class,
              Run.error_message: error_message}
    if status == COMPLETED:
        values[Run.phase] = "done"
    if stream_counters is not None:
        values[Run.stream_counters] = stream_counters
    for name, delta in (counts or {}).items():  # written even with 0: see record_page
        values[getattr(Run, name)] = getattr(Run, name) + delta
    _add_waited(values, waited)
    # RETURNING hands the roll-ups the finished row, and with the connection's name (the
    # caller's `connection_name`) what follows the end (ended): two SELECTs fewer a run.
    row = db.session.execute(
        update(Run).where(*owned(run_id, attempt)).values(values)
        .returning(*rollups.COLUMNS, Run.trigger, Run.mode, Run.error_class, Run.error_message)
        .execution_options(synchronize_session=False)
    ).first()
    ok = row is not None
    if ok:
        rollups.add_finished(run_id, row)
        db.session.add(RunEvent(run_id=run_id, level="error" if status == FAILED else "info",
                                message=f"{status}" + (f": {error_message}" if error_message else "")))
        if connection_health is not None:
            connection_id, health, message = connection_health
            db.session.execute(update(Connection).where(Connection.id == connection_id)
                               .values(health=health, health_message=message)
                               .execution_options(synchronize_session=False))
    if commit:
        if ok:
            db.session.commit()
        else:
            db.session.rollback()
    if ok:
        end = None
        if connection_name is not None:
            end = RunEnd(row.connection_id, connection_name, row.trigger, row.mode, row.started_at, row.finished_at,
                         row.error_class, row.error_message, row.seen, row.failed)
        if commit:
            ended(run_id, status, end=end)
        else:
            count_finished(run_id, status, end)
    return ok


def _add_waited(values, waited):
    """Seconds the attempt's requests waited for rate-limit budget since its last write."""
    if waited:
        values[Run.rate_limit_wait_seconds] = Run.rate_limit_wait_seconds + float(waited)


class RunEnd(NamedTuple):
    """What follows a run's end needs of its row (metrics, issues, the next waiting sync)."""
    connection_id: int
    connection_name: str
    trigger: str
    mode: str
    started_at: object
    finished_at: object
    error_class: object
    error_message: object
    seen: int
    failed: int


def run_end(run_id):
    """The run's RunEnd, read in one statement, or None. Leaves the transaction open."""
    row = db.session.execute(select(Run.connection_id, Connection.name, Run.trigger, Run.mode, Run.started_at,
                                    Run.finished_at, Run.error_class, Run.error_message, Run.seen, Run.failed)
                             .join(Connection, Run.connection_id == Connection.id).where(Run.id == run_id)).first()
    return RunEnd(*row) if row is not None else None


def ended(run_id, status, end=None):
    """What follows a run's end, whichever path ended it (worker, sweep, cancel), after the
    commit: metrics, the connection's issues (webapp/connection_issues.py), and the next
    waiting sync of the connection. The run's row is read once for all three, and the
    reads share one transaction up to the first write (after_run ends it before writing;
    promote_waiting ends it after its read): each transaction is a pool checkout with its
    ping and an end, round trips a no-op run is made of (docs/PERFORMANCE.md, "Cheap runs").
    `end`: the RunEnd when the caller has it (finish, from its UPDATE's RETURNING)."""
    end = end or run_end(run_id)
    if end is None:
        db.session.rollback()
        return
    count_finished(run_id, status, end)
    connection_issues.after_run(run_id, status, end=end)
    promote_waiting(connection_id=end.connection_id)


def count_finished(run_id, status, end=None):
    """Metrics for a run that just reached a terminal status (any path: worker, sweep, cancel).
    `end`: its RunEnd when the caller read it already."""
    end = end or run_end(run_id)
    if end is None:
        return
    metrics.inc("runs_finished", connection=end.connection_name, status=status, trigger=end.trigger)
    if end.started_at and end.finished_at:
        metrics.observe("run_duration_seconds", (end.finished_at - end.started_at).total_seconds(),
                        connection=end.connection_name, status=status)


def retry_later(run_id, attempt, *, error_class, error_message, delay=0.0, now=None, waited=0.0):
    """running -> queued for another attempt (resuming from the checkpoint), or -> waiting
    until `delay` seconds from now when the retry policy asks for a pause between attempts,
    or -> failed when attempts are used up. Returns the new status, or None if the run
    wasn't ours."""
    run = db.session.get(Run, run_id)
    db.session.expire(run)
    if run.attempt != attempt or run.status != RUNNING:
        db.session.rollback()
        return None
    if attempt >= run.max_attempts:
        ok = finish(run_id, attempt, FAILED, error_class=error_class,
                    error_message=f"{error_message} (gave up after {attempt} attempts)", waited=waited)
        return FAILED if ok else None
    values = dict(status=QUEUED, error_class=error_class, error_message=error_message,
                  rq_job_id=run_job_id(run_id, attempt + 1, run.deferrals),
                  **_own_record_key_if_taken(run_id, run.connection_id, run.mode, run.record_key))
    message = f"attempt {attempt} failed ({error_class}: {error_message}); will resume from checkpoint"
    if delay > 0:
        not_before = (now or utcnow()) + timedelta(seconds=delay)
        values.update(status=WAITING, not_before=not_before)
        message += f" after a pause, at {_clock(not_before)}"
    values = {getattr(Run, name): value for name, value in values.items()}
    _add_waited(values, waited)
    result = db.session.execute(
        update(Run).where(*owned(run_id, attempt), Run.cancel_requested.is_(False)).values(values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        return _cancel_instead(run_id, attempt, waited)
    db.session.add(RunEvent(run_id=run_id, level="warning", message=message))
    db.session.commit()
    if values[Run.status] == QUEUED:
        enqueue_run(db.session.get(Run, run_id))
    return values[Run.status]


def defer(run_id, attempt, *, seconds, reason, now=None, waited=0.0):
    """running -> waiting until `seconds` from now, giving the attempt back: the provider
    asked us to come back later (a Retry-After longer than a worker may wait), which is no
    failure. The run keeps its place as the connection's active sync and resumes from its
    checkpoint. Past RUN_MAX_DEFERRALS it fails instead, with the reason. Returns the new
    status, or None if the run wasn't ours."""
    run = db.session.get(Run, run_id)
    db.session.expire(run)
    if run.attempt != attempt or run.status != RUNNING:
        db.session.rollback()
        return None
    limit = current_app.config["RUN_MAX_DEFERRALS"]
    if run.deferrals >= limit:
        ok = finish(run_id, attempt, FAILED, error_class="rate_limited",
                    error_message=f"{reason}; gave up after waiting {limit} times", waited=waited)
        return FAILED if ok else None
    not_before = (now or utcnow()) + timedelta(seconds=seconds)
    sentence = f"{reason} until {_clock(not_before)}"
    result = db.session.execute(
        update(Run).where(*owned(run_id, attempt), Run.cancel_requested.is_(False))
        .values(status=WAITING, not_before=not_before, attempt=attempt - 1, deferrals=Run.deferrals + 1,
                rq_job_id=run_job_id(run_id, attempt, run.deferrals + 1), error_class="rate_limited",
                error_message=sentence, rate_limit_wait_seconds=Run.rate_limit_wait_seconds + float(waited),
                **_own_record_key_if_taken(run_id, run.connection_id, run.mode, run.record_key))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        return _cancel_instead(run_id, attempt, waited)
    db.session.add(RunEvent(run_id=run_id, level="warning",
                            message=f"{sentence}; attempt {attempt} given back, will resume from checkpoint"))
    db.session.commit()
    connection_issues.note_deferred(run.connection_id, sentence, run_id)
    return WAITING


def _own_record_key_if_taken(run_id, connection_id, mode, record_key):
    """A record run going back to queued or waiting re-enters the partial unique index
    uq_runs_one_queued_record. While it ran, a webhook may have queued another run whose
    record_key is the same (a batch's is its first record's: webapp/record_batches.py);
    then this one takes a key of its own, "<key>#<run id>", rather than fail its requeue:
    it still has records to fetch. {} when its key is free."""
    if mode != "record" or not record_key:
        return {}
    taken = db.session.execute(select(Run.id).where(Run.connection_id == connection_id, Run.record_key == record_key,
                                                    Run.id != run_id, text(QUEUED_RECORD_WHERE))).first()
    return {"record_key": f"{record_key}#{run_id}"[:255]} if taken else {}


def _cancel_instead(run_id, attempt, waited=0.0):
    """A run asked to stop must not go back to waiting or the queue (it would sit there, an
    hour maybe, only to be cancelled when taken): it is cancelled now. None when the run is
    no longer this attempt's at all."""
    if finish(run_id, attempt, CANCELLED, error_message="cancelled; it was between attempts", waited=waited):
        return CANCELLED
    return None


def _clock(moment):
    """A time for people: 14:05 UTC today, or with its date."""
    if moment.date() == utcnow().date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def run_dict(run):
    """A run as the API and `sync status --json` show it: the row plus, for a waiting
    run, why it waits."""
    return {**run.to_dict(), "waiting_reason": waiting_reason(run)}


def triggered_dict(result):
    """The answer to a trigger (API and CLI): what happened, the run, and the active sync
    it waits for."""
    return {"run": run_dict(result.run), "created": result.created, "outcome": result.outcome,
            "active_run": run_dict(result.active) if result.active is not None else None}


def waiting_reason(run):
    """Why a waiting run has not started, in words; None for other runs."""
    if run.status != WAITING:
        return None
    if run.not_before is None:
        active = active_run(run.connection_id)
        return (f"waiting for run {active.id} of this connection to end" if active is not None
                else "waiting to be queued: the sync it followed has ended")
    if run.error_class == "rate_limited":
        return run.error_message or f"waiting for the provider's rate limit until {_clock(run.not_before)}"
    return (f"waiting until {_clock(run.not_before)} before attempt {run.attempt + 1} of {run.max_attempts}"
            + (f" (the last one failed: {run.error_message})" if run.error_message else ""))


def _cancel_if(run_id, conditions, message, now, **values):
    """Cancel the run at once if it meets `conditions` (one conditional UPDATE); True if so."""
    result = db.session.execute(
        update(Run).where(Run.id == run_id, *conditions)
        .values(status=CANCELLED, cancel_requested=True, finished_at=now, not_before=None, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    rollups.add_finished(run_id)
    db.session.add(RunEvent(run_id=run_id, message=message))
    db.session.commit()
    ended(run_id, CANCELLED)
    return True


def cancel(run_id, requested_by=None, now=None):
    """Cancel a run in any active state. Returns the run's status afterwards.

    waiting or queued: cancelled at once (it will never start). running: the flag is set and
    the worker stops at its next page boundary. running with no heartbeat for longer than
    the stale threshold: the worker is gone, so the row is cancelled directly.
    """
    now = now or utcnow()
    who = f" by {requested_by}" if requested_by else ""
    for status in (QUEUED, WAITING):
        if _cancel_if(run_id, (Run.status == status,), f"cancelled while {status}{who}", now):
            return CANCELLED
    stale_before = now - timedelta(seconds=current_app.config["STALE_AFTER_SECONDS"])
    if _cancel_if(run_id, (Run.status == RUNNING, Run.heartbeat_at < stale_before),
                  f"cancelled{who}; its worker was gone", now,
                  error_message="cancelled; the worker had stopped sending heartbeats"):
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
    query = select(Run.id, Run.attempt, Run.max_attempts, Run.heartbeat_at, Run.cancel_requested, Run.connection_id,
                   Run.mode, Run.record_key).where(
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
    for run_id, attempt, max_attempts, beat, cancel_requested, connection_id, mode, record_key in stale:
        where = (*owned(run_id, attempt), Run.heartbeat_at == beat)
        since = beat.isoformat(timespec="seconds") + "Z"
        if cancel_requested:
            values = dict(status=CANCELLED, finished_at=now, error_message=f"cancelled; worker lost (no heartbeat since {since})")
            new_status, message = CANCELLED, "cancelled: its worker was lost"
        elif attempt < max_attempts:
            values = dict(status=QUEUED, rq_job_id=run_job_id(run_id, attempt + 1), error_class="worker_lost",
                          error_message=f"worker lost: no heartbeat since {since}",
                          **_own_record_key_if_taken(run_id, connection_id, mode, record_key))
            new_status, message = QUEUED, f"worker lost (no heartbeat since {since}); requeued to resume from checkpoint"
        else:
            values = dict(status=FAILED, finished_at=now, error_class="worker_lost",
                          error_message=f"worker lost: no heartbeat since {since}; no attempts left ({attempt}/{max_attempts})")
            new_status, message = FAILED, values["error_message"]
        result = db.session.execute(update(Run).where(*where).values(**values).execution_options(synchronize_session=False))
        if result.rowcount != 1:
            db.session.rollback()
            continue
        if new_status != QUEUED:
            rollups.add_finished(run_id)
        db.session.add(RunEvent(run_id=run_id, level="warning", message=message))
        db.session.commit()
        metrics.inc("stale_runs_swept", action=new_status)
        if new_status != QUEUED:
            ended(run_id, new_status)
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


def resume_connection(connection, *, credentials_changed, settings_changed, requested_by=None):
    """A person saved the connection's credentials or settings: what they fix is resolved,
    a paused connection resumes and one run proves the fix (webapp/connection_issues.py).
    Returns the proving run, or None."""
    if not connection_issues.resume(connection, credentials_changed=credentials_changed,
                                    settings_changed=settings_changed, requested_by=requested_by):
        return None
    mode = (connection.settings or {}).get("schedule_mode") or "full"
    who = requested_by or "a person"
    try:
        return trigger(connection, mode=mode, trigger="manual", requested_by=f"resumed by {who}: proving run").run
    except TriggerRefused as exc:
        log.warning("connection %s resumed, but its proving run was refused: %s", connection.name, exc)
        return None
