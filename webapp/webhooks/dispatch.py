"""Stored deliveries become record runs, off the request path.

The endpoint (ingest.py) verifies, stores and answers; then `kick()` makes sure a dispatch
job is queued on RQ's "webhooks" queue (workers take it before anything else). That job
(worker.jobs.dispatch_webhooks) calls `dispatch_until_empty()`, and the safety net calls
`dispatch_pending()`: both take the "received" deliveries in batches: claim a batch,
create its record runs and record the outcome of every delivery in ONE transaction, then
enqueue the new runs in one Redis round trip. A claim is never committed on its own, so a
dispatcher that dies mid-batch leaves its deliveries "received" for the next one, and a
delivery's runs exist exactly when its outcome says so.

Outcomes: "received" (stored; its runs not yet created, or created but not yet handed to
RQ because Redis was down), "enqueued", "ignored" (the connector maps it to nothing, or
the connection's trigger policy takes no webhooks: then with the reason), "failed" (with
the reason). The supervisor's periodic step and POST /api/cron/webhooks call
`dispatch_pending(min_age_seconds=5)`: the safety net for a lost kick (Redis down when the
delivery arrived, a dispatch job lost with its worker).
"""
import json
import logging
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import redis
from flask import current_app
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError

from .. import queue, record_batches, redis_keys, runs, trigger_policy
from ..connectors import connector_class
from ..connectors.base import Services
from ..error_words import describe
from ..connectors.errors import ConfigError
from ..extensions import db, redis_ext
from ..models import QUEUED, Connection, Run, WebhookDelivery, utcnow
from ..queue import WEBHOOKS, enqueue_execute_runs

log = logging.getLogger(__name__)

RECEIVED, DISPATCHING, ENQUEUED, IGNORED, FAILED = "received", "dispatching", "enqueued", "ignored", "failed"
DISPATCH_JOB = "worker.jobs.dispatch_webhooks"
# The marker of the pending dispatch job (queue.enqueue_unless_pending), released by that
# job when it finds nothing left, before one last look. It is trusted for its whole life:
# looking at its job would triple this hot path's round trips, and a lost job only holds
# dispatching back until the marker expires (the supervisor's step is the safety net).
KICK_TTL_SECONDS = 30
KICK_STATE = "synchub_webhook_kick"
# A webhook's answer waits for its kick, so a Redis that stopped answering (a network partition
# drops packets: docs/RELIABILITY.md, "Partitions") must not hold it for the main client's 10 s
# socket timeout (extensions.py): the kick has a client of its own with a short one. After a kick
# failed, a process asks again only every KICK_AWAY_SECONDS, one request at a time; the others
# answer at once. Deliveries stored meanwhile are as safe as after any failed kick: the
# supervisor's step dispatches them.
KICK_TIMEOUT_SECONDS = 2.0
KICK_AWAY_SECONDS = 5.0
_kick_lock = threading.Lock()
BATCH_SIZE = 200
# On SQLite a batch holds the database's only write lock while it is written: smaller
# batches keep deliveries from waiting long behind one.
SQLITE_BATCH_SIZE = 50


def connector_for(connection):
    services = Services(config=current_app.config, connection_id=connection.id)
    return connector_class(connection.connector)(connection.settings, connection.credentials, services)


def kick_marker():
    return redis_keys.key("webhooks", "dispatch-kick")


def kick():
    """After a delivery is committed: make sure a dispatch job will see it. Returns False
    when Redis is away (the supervisor's step dispatches the delivery later).

    A process that asked Redis less than WEBHOOK_KICK_DEBOUNCE_SECONDS ago does not ask
    again: under load that round trip cost as much as storing the delivery. It is safe
    because a dispatch job, after releasing the marker, waits that long before its last
    look (worker.jobs.dispatch_webhooks): any request that skipped asking had asked before
    the release, or while a job that had not yet released the marker was pending, so a
    last look is still to come after its commit.
    """
    state = current_app.extensions.setdefault(KICK_STATE, {"asked_at": None, "failed_at": None, "probing": False,
                                                           "client": None})
    debounce = current_app.config["WEBHOOK_KICK_DEBOUNCE_SECONDS"]
    now = time.monotonic()
    probing = False
    if state["failed_at"] is not None:  # Redis did not answer the last kick
        with _kick_lock:
            if state["probing"] or now - state["failed_at"] < KICK_AWAY_SECONDS:
                return False
            state["probing"] = probing = True
    elif state["asked_at"] is not None and now - state["asked_at"] < debounce:
        return True
    # Recorded before asking, so the other threads of this process do not all ask at once.
    # Still safe: the dispatcher that releases the marker does so after this ask is answered.
    state["asked_at"] = now
    try:
        queue.enqueue_unless_pending(
            kick_marker(), WEBHOOKS, DISPATCH_JOB, kind="webhook-dispatch",
            marker_ttl=KICK_TTL_SECONDS, trust_seconds=KICK_TTL_SECONDS, connection=_kick_client(state),
            timeout=current_app.config["JOB_TIMEOUT_SECONDS"], result_ttl=60, failure_ttl=7 * 24 * 3600,
            description="dispatch webhook deliveries")
        state["failed_at"] = None
        return True
    except (redis.RedisError, OSError) as exc:
        state["asked_at"] = None  # nobody may skip on the strength of a question that failed
        state["failed_at"] = time.monotonic()
        log.warning("webhook dispatch not kicked (%s): the supervisor will dispatch stored deliveries", type(exc).__name__)
        return False
    finally:
        if probing:
            state["probing"] = False


def _kick_client(state):
    if state["client"] is None:
        state["client"] = redis.Redis.from_url(redis_ext.url, socket_timeout=KICK_TIMEOUT_SECONDS,
                                               socket_connect_timeout=KICK_TIMEOUT_SECONDS)
    return state["client"]


def release_kick():
    """The dispatch job's side: from here on it looks again, so new deliveries need a new job."""
    queue.release(kick_marker())


def last_look_delay():
    """How long a dispatch job waits between releasing the marker and its last look: the
    web processes' debounce, with a margin (see kick())."""
    return current_app.config["WEBHOOK_KICK_DEBOUNCE_SECONDS"] * 1.2 + 0.01


def _batch_size():
    return SQLITE_BATCH_SIZE if db.session.get_bind().dialect.name == "sqlite" else BATCH_SIZE


def dispatch_until_empty():
    """Dispatch every "received" delivery, however fresh, in batches. Returns how many are
    now enqueued."""
    total, size = 0, _batch_size()
    while True:
        claimed, enqueued = _dispatch_batch(size, cutoff=None)
        total += enqueued
        if claimed < size:
            return total


def dispatch_pending(limit=500, min_age_seconds=5.0, now=None):
    """Dispatch deliveries received at least `min_age_seconds` ago (the safety net), at
    most `limit` of them. Returns how many are now enqueued. Does nothing while Redis is
    unreachable: their runs could not be handed to a worker anyway."""
    if redis_ext.optional() is None:
        return 0
    cutoff = (now or utcnow()) - timedelta(seconds=min_age_seconds)
    done, size = 0, _batch_size()
    while limit > 0:
        claimed, enqueued = _dispatch_batch(min(limit, size), cutoff)
        done, limit = done + enqueued, limit - claimed
        if claimed < size:
            break
    return done


def _dispatch_batch(limit, cutoff, attempts=3):
    """(deliveries looked at, deliveries now enqueued) for one batch."""
    for attempt in range(attempts):
        try:
            return _dispatch_batch_once(limit, cutoff)
        except (IntegrityError, record_batches.StaleBatch):
            # Another transaction queued a run for one of these records meanwhile (the
            # partial unique index), or a worker claimed the run we were adding records
            # to. Nothing of ours was committed: take the batch again, and this time find
            # that run, or start a new one.
            db.session.rollback()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _dispatch_batch_once(limit, cutoff):
    """Take a batch (see _take), insert its runs and settle it in one transaction."""
    candidates, plans, mine = _take(limit, cutoff)
    if not mine:  # nothing, or another dispatcher is settling them right now: it goes on from there
        db.session.rollback()
        return 0, 0
    settled, to_enqueue, announce = {}, [], []
    fresh_by_connection = {}
    for delivery_id, plan in plans.items():
        if delivery_id not in mine:
            continue  # another dispatcher has it (or had it)
        kind, connection, detail = plan
        if kind == "settled":
            settled[delivery_id] = detail
        elif kind == "waiting":
            settled[delivery_id] = (ENQUEUED, detail, None)
        else:
            fresh_by_connection.setdefault(connection.id, (connection, []))[1].append((delivery_id, detail))
    to_enqueue += _queued_runs_never_enqueued({run_id for delivery_id, (outcome, ids, _e) in settled.items()
                                 if outcome == ENQUEUED for run_id in ids})
    for connection, mapped in fresh_by_connection.values():
        created = _settle_fresh(connection, mapped, settled)
        announce.append((connection, created))
        to_enqueue += created
    _write_outcomes(settled)
    db.session.commit()
    for connection, created in announce:
        runs.announce_created(connection, created)
    put_back = _enqueue(to_enqueue, settled) if to_enqueue else set()
    enqueued = sum(1 for delivery_id, (outcome, _ids, _error) in settled.items()
                   if outcome == ENQUEUED and delivery_id not in put_back)
    return len(candidates), enqueued


def _take(limit, cutoff):
    """(candidate rows, their plans, the ids this transaction now owns).

    PostgreSQL: the rows are locked as they are read (FOR UPDATE SKIP LOCKED), so parallel
    dispatchers take different rows and nothing is written to claim them. SQLite has no
    row locks: the batch is read and mapped first, then claimed by an UPDATE that starts
    the write transaction, which holds the database's only write lock (the web processes
    storing deliveries wait for it) and so must be short. A claim is never committed on
    its own: it is part of the transaction that settles the batch."""
    table = WebhookDelivery.__table__
    pick = select(table.c.id, table.c.connection_id, table.c.raw_body, table.c.run_ids).where(table.c.outcome == RECEIVED)
    if cutoff is not None:
        pick = pick.where(table.c.received_at <= cutoff)
    pick = pick.order_by(table.c.id).limit(limit)
    if db.session.get_bind().dialect.name != "sqlite":
        candidates = db.session.execute(pick.with_for_update(skip_locked=True)).all()
        return candidates, _plan(candidates), {row.id for row in candidates}
    candidates = db.session.execute(pick).all()
    plans = _plan(candidates)
    db.session.rollback()  # no read snapshot carried into the write (SQLite would refuse the upgrade)
    if not candidates:
        return candidates, plans, set()
    mine = set(db.session.execute(
        update(table).where(table.c.id.in_([row.id for row in candidates]), table.c.outcome == RECEIVED)
        .values(outcome=DISPATCHING).returning(table.c.id)
    ).scalars())
    return candidates, plans, mine


def _plan(candidates):
    """{delivery id: (kind, connection, detail)} decided from the rows alone: "settled"
    with (outcome, run ids, error); "waiting" with its existing run ids; "fresh" with the
    (stream, record_id, deleted) events the connector maps it to."""
    plans, connections = {}, {}
    for row in candidates:
        if row.connection_id not in connections:
            connections[row.connection_id] = _connection_and_connector(row.connection_id)
        connection, connector, error = connections[row.connection_id]
        if error is not None:
            plans[row.id] = ("settled", connection, (FAILED, list(row.run_ids or []), error))
        elif row.run_ids:
            plans[row.id] = ("waiting", connection, list(row.run_ids))
        elif connection.webhooks_off is not None:
            plans[row.id] = ("settled", connection, (IGNORED, [], connection.webhooks_off))
        else:
            try:
                events = [tuple(event) for event in connector.webhook_events(json.loads(row.raw_body))]
            except Exception as exc:  # provider payloads vary: keep the delivery, say why
                log.warning("delivery %s: connector could not map it: %s", row.id, exc)
                plans[row.id] = ("settled", connection, (FAILED, [], f"could not map the delivery: {describe(exc)}: {exc}"[:500]))
                continue
            plans[row.id] = ("fresh", connection, events) if events else ("settled", connection, (IGNORED, [], None))
    return plans


def webhooks_off(connection):
    """Why the connection's trigger policy takes no webhooks, or None. A disabled connection
    is not "off": its deliveries fail with that reason where their runs would be created,
    and can be replayed once it is enabled again."""
    return trigger_policy.refusal(connection, "webhook") if connection.enabled else None


def _connection_and_connector(connection_id):
    """(what runs.check_trigger and add_record_runs read of the connection, with
    `webhooks_off`; its connector or None; an error or None). Plain values: they outlive
    the read transaction. One read per connection and batch, whatever its deliveries."""
    row = db.session.get(Connection, connection_id)
    connection = SimpleNamespace(id=row.id, name=row.name, enabled=row.enabled, manual_only=row.manual_only,
                                 settings=dict(row.settings or {}))
    connection.webhooks_off = webhooks_off(connection)
    try:
        return connection, connector_for(row), None
    except (ConfigError, ValueError) as exc:
        return connection, None, f"{describe(exc)}: {exc}"[:500]


def _queued_runs_never_enqueued(run_ids):
    """Runs of deliveries that exist but never reached RQ and are still queued (runs that
    already ran, e.g. requeued by the supervisor, are not created again)."""
    if not run_ids:
        return []
    table = Run.__table__
    rows = db.session.execute(select(table.c.id, table.c.rq_job_id, table.c.mode, table.c.trigger)
                              .where(table.c.id.in_(run_ids), table.c.status == QUEUED)).all()
    return [runs.QueuedRun(*row) for row in rows]


def _settle_fresh(connection, mapped, settled):
    """Record runs for [(delivery id, events)] of one connection, in batches
    (webapp/record_batches.py); returns the runs created."""
    try:
        run_ids, created = record_batches.add_records(connection, mapped)
    except runs.TriggerOff as exc:
        for delivery_id, _events in mapped:
            settled[delivery_id] = (IGNORED, [], str(exc))
        return []
    except runs.TriggerRefused as exc:
        for delivery_id, _events in mapped:
            settled[delivery_id] = (FAILED, [], str(exc))
        return []
    for delivery_id, _events in mapped:
        settled[delivery_id] = (ENQUEUED, run_ids[delivery_id], None)
    return created


def _write_outcomes(settled):
    table = WebhookDelivery.__table__
    db.session.execute(
        update(table).where(table.c.id == bindparam("delivery_id"))
        .values(outcome=bindparam("outcome"), run_ids=bindparam("run_ids", type_=table.c.run_ids.type),
                error=bindparam("error")),
        [{"delivery_id": delivery_id, "outcome": outcome, "run_ids": ids, "error": error}
         for delivery_id, (outcome, ids, error) in settled.items()],
    )


def _enqueue(to_enqueue, settled):
    """Hand the batch's queued runs to RQ. If Redis fails, their deliveries go back to
    "received" (runs kept) for the safety net. Returns the ids of those put back."""
    try:
        enqueue_execute_runs(to_enqueue)
        return set()
    except (redis.RedisError, OSError) as exc:
        log.warning("%d webhook runs stay queued, enqueue failed: %s", len(to_enqueue), type(exc).__name__)
    run_ids = {run.id for run in to_enqueue}
    back = {delivery_id for delivery_id, (outcome, ids, _e) in settled.items()
            if outcome == ENQUEUED and run_ids.intersection(ids)}
    if back:
        db.session.execute(update(WebhookDelivery).where(WebhookDelivery.id.in_(back), WebhookDelivery.outcome == ENQUEUED)
                           .values(outcome=RECEIVED).execution_options(synchronize_session=False))
        db.session.commit()
    return back


def replay(delivery_id, requested_by=None):
    """Re-create the record runs of a stored delivery (the admin's Replay button): runs
    are triggered again whatever its outcome was, unless the connection's trigger policy
    takes no webhooks (then "ignored" again, with the reason). Returns the run ids it caused."""
    delivery = db.session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise LookupError(f"no webhook delivery {delivery_id}")
    connection = db.session.get(Connection, delivery.connection_id)
    off = webhooks_off(connection)
    if off is not None:
        return _settle_one(delivery, [], IGNORED, off)
    connector = connector_for(connection)
    payload = json.loads(delivery.raw_body)
    try:
        events = list(connector.webhook_events(payload))
    except Exception as exc:
        return _settle_one(delivery, [], FAILED, f"could not map the delivery: {describe(exc)}: {exc}"[:500])
    if not events:
        return _settle_one(delivery, [], IGNORED, None)
    run_ids, all_enqueued = [], True
    try:
        for stream, record_id, deleted in events:
            result = runs.trigger(connection, mode="record", record_key=f"{stream}:{record_id}",
                                  params={"stream": stream, "record_id": str(record_id), "deleted": bool(deleted)},
                                  streams=[stream], trigger="webhook", requested_by=requested_by, enqueue=False)
            run_ids.append(result.run.id)
            if result.run.status == QUEUED:
                all_enqueued = runs.enqueue_run(result.run) and all_enqueued
    except runs.TriggerRefused as exc:
        return _settle_one(delivery, run_ids, FAILED, str(exc))
    return _settle_one(delivery, run_ids, ENQUEUED if all_enqueued else RECEIVED, None)


def _settle_one(delivery, run_ids, outcome, error):
    merged = list(dict.fromkeys(list(delivery.run_ids or []) + run_ids))
    db.session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id)
                       .values(run_ids=merged, outcome=outcome, error=error)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    delivery.run_ids, delivery.outcome, delivery.error = merged, outcome, error
    return run_ids
