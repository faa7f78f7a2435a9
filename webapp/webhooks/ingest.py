"""Inbound webhooks, from raw request to a stored delivery.

    size (413) → content type (415) → connection → signature over the raw body (401)
    → JSON (400) → store the delivery (unique per provider event id) → kick the
    dispatcher → answer 2xx

A delivery is committed before anything is acknowledged, so a 2xx always means "stored".
The request does nothing more: its record runs are created by the dispatcher
(dispatch.py), in batches, in a worker. That keeps a delivery to one INSERT and one Redis
SET, where creating a run, its event and its RQ job inline cost the web process several
times more CPU per delivery (docs/PERFORMANCE.md, "Webhook ingest"). Rejected requests store nothing: they are
logged and counted in Redis (best effort).
"""
import hashlib
import json
import logging
from dataclasses import dataclass, field

import redis
from sqlalchemy.exc import SQLAlchemyError

from .. import metrics, redis_keys
from ..connectors.errors import ConfigError
from ..extensions import db, redis_ext
from ..models import utcnow
from . import delivery_writer, dispatch, signatures, targets

log = logging.getLogger(__name__)

# Headers worth keeping with a delivery for the admin page: signature material is public
# once sent; Authorization (HaloPSA's Basic credentials) is never kept.
KEPT_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature",
                "x-zm-request-timestamp", "x-zm-signature", "x-ghl-signature", "x-wh-signature")

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
        redis_ext.client.hincrby(redis_keys.key("webhooks", "rejected"), f"{label}:{code}", 1)
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
        return _receive(connection_key, raw_body, headers, now)
    except (SQLAlchemyError, delivery_writer.DeliveryNotStored):
        db.session.rollback()
        log.exception("webhook for %s: database error", connection_key)
        return _unavailable(connection_key, headers)


def _receive(connection_key, raw_body, headers, now):
    try:
        target = targets.lookup(connection_key)
    except LookupError:
        return reject(404, "unknown_connection", f"no connection {connection_key!r}", connection_key)
    except ConfigError as exc:
        return reject(404, "webhooks_not_supported", str(exc), connection_key)
    scheme = target.scheme
    if not scheme:
        return reject(404, "webhooks_not_supported",
                      f"connector {target.connector_name!r} does not take webhooks", connection_key)
    _scheme_cache[str(connection_key)] = scheme
    try:
        signatures.verify(scheme, raw_body, headers, target.settings, target.connector.credentials, now)
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
        return Answer(200, signatures.zoom_url_validation_response(plain, target.connector.credentials["webhook_secret_token"]))

    event_id = _bounded(target.connector.webhook_event_id(payload, headers)
                        or default_event_id(scheme, payload, headers, raw_body))
    event_type = payload.get("type") or payload.get("event")
    delivery_id, duplicate = store(target.id, event_id, event_type, headers, raw_body)
    if duplicate:
        metrics.inc("webhook_deliveries", connection=target.name, verdict="duplicate")
        return Answer(200, {"status": "duplicate", "delivery_id": delivery_id, "event_id": event_id})
    metrics.inc("webhook_deliveries", connection=target.name, verdict="accepted")
    dispatch.kick()
    return Answer(200, {"status": "accepted", "delivery_id": delivery_id, "event_id": event_id, "outcome": "received"})


def store(connection_id, event_id, event_type, headers, raw_body):
    """Commit the delivery; returns (delivery id, duplicate?). The unique (connection,
    event id) constraint decides races: of parallel duplicates exactly one insert wins;
    the others count themselves on it."""
    kept = {name: headers[name] for name in KEPT_HEADERS if headers.get(name)}
    return delivery_writer.insert_delivery(connection_id, event_id, str(event_type)[:100] if event_type else None,
                                           utcnow(), kept, raw_body)


def rejected_counts():
    """{"<connection>:<code>": count} of rejected requests, or {} when Redis is away."""
    try:
        raw = redis_ext.client.hgetall(redis_keys.key("webhooks", "rejected"))
    except (redis.RedisError, OSError):
        return {}
    return {k.decode(): int(v) for k, v in raw.items()}
