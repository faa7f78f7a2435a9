"""Inbound webhooks, from raw request to record runs.

    size (413) → content type (415) → connection → signature over the raw body (401)
    → JSON (400) → store the delivery (unique per provider event id) → answer 2xx
    → record runs via runs.trigger on the high queue

A delivery is committed before anything is acknowledged, so a 2xx always means "stored".
Its runs are created right after; if Redis is down they stay queued in the database and
the delivery keeps outcome "received" until process_pending_deliveries() (called by the
supervisor, and by POST /api/cron/webhooks) enqueues them. Rejected requests store nothing:
they are logged and counted in Redis (best effort).
"""
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .. import metrics, runs
from ..connectors.base import Services, connector_class
from ..connectors.errors import ConfigError
from ..extensions import db, redis_ext
from ..models import QUEUED, Connection, Run, WebhookDelivery, utcnow
from . import signatures

log = logging.getLogger(__name__)

REJECTED_COUNTER = "synchub:webhooks:rejected"
# Headers worth keeping with a delivery for the admin page: signature material is public
# once sent; Authorization (HaloPSA's Basic credentials) is never kept.
KEPT_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature",
                "x-zm-request-timestamp", "x-zm-signature", "x-ghl-signature", "x-wh-signature")
RECEIVED, ENQUEUED, IGNORED, FAILED = "received", "enqueued", "ignored", "failed"
# What a connection's scheme was when we last saw it, so that with the database down we
# still answer HighLevel 429 (the only status it retries). Names and ids only, no secrets.
_scheme_cache = {}


@dataclass
class Answer:
    status: int
    body: dict
    headers: dict = field(default_factory=dict)


def reject(status, code, reason, connection_key=None, headers=None):
    log.info("webhook for %s rejected: %s %s (%s)", connection_key, status, code, reason)
    # Counted per connection only for connections that exist: anyone can POST to any URL,
    # and the counter must not grow with every name they make up.
    label = str(connection_key) if str(connection_key) in _scheme_cache else "(unknown)"
    metrics.inc("webhook_deliveries", connection=label, verdict=code)
    try:
        redis_ext.client.hincrby(REJECTED_COUNTER, f"{label}:{code}", 1)
    except (redis.RedisError, OSError):
        pass  # a counter is not worth failing (or slowing) a rejection for
    return Answer(status, {"error": code, "reason": reason}, headers or {})


def _unavailable(connection_key, headers):
    scheme = _scheme_cache.get(str(connection_key))
    if scheme is None and (headers.get("x-ghl-signature") or headers.get("x-wh-signature")):
        scheme = "highlevel"
    log.error("webhook for %s not stored: database unavailable", connection_key)
    if scheme == "highlevel":
        return Answer(429, {"error": "unavailable", "reason": "cannot store the delivery now; retry later"},
                      {"Retry-After": "60"})
    return Answer(503, {"error": "unavailable", "reason": "cannot store the delivery now; retry later"},
                  {"Retry-After": "30"})


def _is_json(content_type):
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def connector_for(connection):
    services = Services(config=current_app.config, connection_id=connection.id)
    return connector_class(connection.connector)(connection.settings, connection.credentials, services)


def default_event_id(scheme, payload, headers, raw_body):
    if scheme == "standard" and headers.get("webhook-id"):
        return headers["webhook-id"]
    if scheme == "highlevel" and payload.get("webhookId"):
        return str(payload["webhookId"])
    # Zoom and HaloPSA send no delivery id: a retry resends the same bytes.
    return "sha256:" + hashlib.sha256(raw_body).hexdigest()


def _bounded(event_id):
    event_id = str(event_id)
    return event_id if len(event_id) <= 200 else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def receive(connection_key, raw_body, headers, content_type, now=None):
    """Everything after the size check. Returns an Answer; never raises for bad input."""
    if not _is_json(content_type):
        return reject(415, "unsupported_media_type", "Content-Type must be application/json", connection_key)
    try:
        with _keep_loaded():
            return _receive(connection_key, raw_body, headers, content_type, now)
    except SQLAlchemyError:
        db.session.rollback()
        log.exception("webhook for %s: database error", connection_key)
        return _unavailable(connection_key, headers)


@contextlib.contextmanager
def _keep_loaded():
    """Objects stay loaded across this flow's commits. Nothing else writes them meanwhile,
    and re-reading each one after every commit doubled the database round trips of a
    delivery (bench/webhook_ingest.py)."""
    session = db.session()
    before, session.expire_on_commit = session.expire_on_commit, False
    try:
        yield
    finally:
        session.expire_on_commit = before


def _receive(connection_key, raw_body, headers, content_type, now):
    try:
        connection = _lookup(connection_key)
    except LookupError:
        return reject(404, "unknown_connection", f"no connection {connection_key!r}", connection_key)
    try:
        connector = connector_for(connection)
    except ConfigError as exc:
        return reject(404, "webhooks_not_supported", str(exc), connection_key)
    scheme = connector.webhook_scheme
    if not scheme:
        return reject(404, "webhooks_not_supported",
                       f"connector {connection.connector!r} does not take webhooks", connection_key)
    _scheme_cache[str(connection_key)] = scheme
    try:
        signatures.verify(scheme, raw_body, headers, connection.settings, connector.credentials, now)
    except signatures.SignatureError as exc:
        return reject(exc.status, exc.code, exc.reason, connection_key)
    try:
        payload = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        return reject(400, "malformed_json", "the body is not valid JSON", connection_key)
    if not isinstance(payload, dict):
        return reject(400, "malformed_json", "the body must be a JSON object", connection_key)

    if scheme == "zoom" and payload.get("event") == "endpoint.url_validation":
        plain = (payload.get("payload") or {}).get("plainToken")
        if not plain:
            return reject(400, "malformed_json", "endpoint.url_validation without payload.plainToken", connection_key)
        return Answer(200, signatures.zoom_url_validation_response(plain, connector.credentials["webhook_secret_token"]))

    event_id = _bounded(connector.webhook_event_id(payload, headers)
                        or default_event_id(scheme, payload, headers, raw_body))
    event_type = payload.get("type") or payload.get("event")
    delivery, duplicate = store(connection.id, event_id, event_type, headers, raw_body)
    if duplicate:
        metrics.inc("webhook_deliveries", connection=connection.name, verdict="duplicate")
        return Answer(200, {"status": "duplicate", "delivery_id": delivery.id, "event_id": event_id})
    metrics.inc("webhook_deliveries", connection=connection.name, verdict="accepted")
    run_ids = dispatch(delivery, connection, connector, payload)
    return Answer(200, {"status": "accepted", "delivery_id": delivery.id, "event_id": event_id,
                        "outcome": delivery.outcome, "run_ids": run_ids})


def _lookup(key):
    text = str(key)
    # get_connection reads any isdigit() text as an id: "²" or 2**40 must not reach int() or SQL.
    if "\x00" in text or len(text) > 100 or (text.isdigit() and (not text.isascii() or int(text) > 2**31 - 1)):
        raise LookupError(key)
    return runs.get_connection(text)


def store(connection_id, event_id, event_type, headers, raw_body):
    """Commit the delivery. The unique (connection, event id) constraint decides races:
    of parallel duplicates exactly one insert wins; the others count themselves on it."""
    kept = {name: headers[name] for name in KEPT_HEADERS if headers.get(name)}
    delivery = WebhookDelivery(connection_id=connection_id, provider_event_id=event_id,
                               event_type=str(event_type)[:100] if event_type else None,
                               headers=kept, raw_body=raw_body, outcome=RECEIVED, run_ids=[])
    db.session.add(delivery)
    try:
        db.session.commit()
        return delivery, False
    except IntegrityError:
        db.session.rollback()
    match = (WebhookDelivery.connection_id == connection_id, WebhookDelivery.provider_event_id == event_id)
    db.session.execute(update(WebhookDelivery).where(*match)
                       .values(duplicates=WebhookDelivery.duplicates + 1)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    return db.session.execute(select(WebhookDelivery).where(*match)).scalar_one(), True


def dispatch(delivery, connection, connector, payload, *, enqueue_existing=False, requested_by=None):
    """Turn a stored delivery into record runs. Returns the run ids it caused.

    Outcome afterwards: "enqueued" when every run reached RQ, "received" when some could not
    (Redis down: the runs wait queued in the database), "ignored" when the connector maps
    the delivery to nothing, "failed" with the reason when it cannot be mapped or triggered.
    `enqueue_existing` also re-enqueues runs that were already queued (the pending path).
    """
    try:
        events = list(connector.webhook_events(payload))
    except Exception as exc:  # provider payloads vary: keep the delivery, say why
        log.warning("delivery %s: connector could not map it: %s", delivery.id, exc)
        return _settle(delivery, [], FAILED, f"could not map the delivery: {type(exc).__name__}: {exc}"[:500])
    if not events:
        return _settle(delivery, [], IGNORED, None)
    run_ids, all_enqueued = [], True
    try:
        for stream, record_id, deleted in events:
            result = runs.trigger(connection, mode="record", record_key=f"{stream}:{record_id}",
                                  params={"stream": stream, "record_id": str(record_id), "deleted": bool(deleted)},
                                  streams=[stream], trigger="webhook", requested_by=requested_by, enqueue=False)
            run_ids.append(result.run.id)
            if (result.created or enqueue_existing) and result.run.status == QUEUED:
                all_enqueued = runs.enqueue_run(result.run) and all_enqueued
    except runs.TriggerRefused as exc:
        return _settle(delivery, run_ids, FAILED, str(exc))
    return _settle(delivery, run_ids, ENQUEUED if all_enqueued else RECEIVED, None)


def _settle(delivery, run_ids, outcome, error):
    merged = list(dict.fromkeys(list(delivery.run_ids or []) + run_ids))
    db.session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery.id)
                       .values(run_ids=merged, outcome=outcome, error=error)
                       .execution_options(synchronize_session=False))
    db.session.commit()
    delivery.run_ids, delivery.outcome, delivery.error = merged, outcome, error
    return run_ids


def _redeliver(delivery, requested_by=None):
    connection = db.session.get(Connection, delivery.connection_id)
    connector = connector_for(connection)
    payload = json.loads(delivery.raw_body)
    with _keep_loaded():
        return dispatch(delivery, connection, connector, payload, enqueue_existing=True, requested_by=requested_by)


def process_pending_deliveries(limit=500, min_age_seconds=5.0, now=None):
    """Enqueue the runs of deliveries that were stored while Redis was down (or whose
    handler died between storing and enqueueing). For the supervisor's periodic steps and
    POST /api/cron/webhooks. Safe to run concurrently: runs.trigger deduplicates queued
    record runs, and a worker only ever claims a run once. Returns how many deliveries
    are now enqueued; does nothing while Redis is still unreachable."""
    if redis_ext.optional() is None:
        return 0
    cutoff = (now or utcnow()) - timedelta(seconds=min_age_seconds)
    pending = db.session.execute(
        select(WebhookDelivery).where(WebhookDelivery.outcome == RECEIVED, WebhookDelivery.received_at <= cutoff)
        .order_by(WebhookDelivery.id).limit(limit)
    ).scalars().all()
    done = 0
    for delivery in pending:
        try:
            if delivery.run_ids:
                _enqueue_waiting(delivery)
            else:  # stored, but its runs were never created (the handler died in between)
                _redeliver(delivery)
        except (ConfigError, ValueError) as exc:
            _settle(delivery, [], FAILED, f"{type(exc).__name__}: {exc}"[:500])
            continue
        done += delivery.outcome == ENQUEUED
    return done


def _enqueue_waiting(delivery):
    """Its runs exist: enqueue those still queued. Runs that already ran (the supervisor's
    requeue_lost may have got there first) are not created again."""
    waiting = db.session.execute(select(Run).where(Run.id.in_(delivery.run_ids), Run.status == QUEUED)).scalars().all()
    enqueued = [runs.enqueue_run(run) for run in waiting]
    _settle(delivery, [], ENQUEUED if all(enqueued) else RECEIVED, None)


def replay(delivery_id, requested_by=None):
    """Re-create the record runs of a stored delivery (the admin's Replay button)."""
    delivery = db.session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise LookupError(f"no webhook delivery {delivery_id}")
    return _redeliver(delivery, requested_by=requested_by)


def rejected_counts():
    """{"<connection>:<code>": count} of rejected requests, or {} when Redis is away."""
    try:
        raw = redis_ext.client.hgetall(REJECTED_COUNTER)
    except (redis.RedisError, OSError):
        return {}
    return {k.decode(): int(v) for k, v in raw.items()}
