"""Outbox over HTTP: apps publish events (token), cron drains (shared secret).

POST /api/outbox                 one event {type, key, payload, idempotency_key?, connection?}
                                 or {"events": [...]} (at most 100, one transaction) -> 202
GET  /api/outbox                 ?status=&type=&key=&limit= -> recent events, newest first
GET  /api/outbox/<id>            one event
POST /api/cron/outbox/drain      X-Cron-Secret -> 202, a drain job is queued
"""
from flask import jsonify, request
from sqlalchemy import select

from .. import outbox
from ..outbox import queries
from ..outbox.publish import MAX_KEY, MAX_TYPE, NoDestination
from ..extensions import db
from ..models import OUTBOX_STATUSES, OutboxEvent
from .blueprint import bp
from .auth import require_cron_secret, require_token
from .common import error_response

MAX_BATCH = 100


def _error(status, error, reason):
    return error_response(status, error, reason)


@bp.post("/outbox")
@require_token
def publish_events():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, "bad_request", "the body must be a JSON object")
    single = "events" not in body
    events = [body] if single else body["events"]
    if not isinstance(events, list) or not events or len(events) > MAX_BATCH:
        return _error(400, "bad_request", f"events must be a list of 1 to {MAX_BATCH} event objects")
    header_key = request.headers.get("Idempotency-Key")
    results = []
    try:
        for index, item in enumerate(events):
            if not isinstance(item, dict):
                raise outbox.PublishError("each event must be a JSON object")
            unknown = set(item) - {"type", "key", "payload", "idempotency_key", "connection"}
            if unknown:
                raise outbox.PublishError(f"unknown field(s): {', '.join(sorted(unknown))}")
            idempotency_key = item.get("idempotency_key") or (header_key if single else None)
            published = outbox.publish(db.session, item.get("type"), item.get("key"),
                                       item.get("payload", {}), idempotency_key=idempotency_key,
                                       connection=item.get("connection"))
            results.append({"event_ids": published.ids, "duplicate": published.duplicate})
    except outbox.PublishError as exc:
        db.session.rollback()  # all or nothing: a batch with one bad event writes none
        where = "" if single else f"events[{index}]: "
        if isinstance(exc, NoDestination):  # a well-formed event the configuration cannot take
            return _error(409, "no_destination", f"{where}{exc}")
        return _error(422, "unprocessable", f"{where}{exc}")
    db.session.commit()  # the real-time attempt is enqueued once this commits
    if single:
        return jsonify(results[0]), 202
    return jsonify(events=results, event_ids=[i for r in results for i in r["event_ids"]]), 202


@bp.get("/outbox")
@require_token
def list_events():
    status = request.args.get("status")
    if status is not None and status not in OUTBOX_STATUSES:
        return _error(400, "bad_request", f"status must be one of {', '.join(OUTBOX_STATUSES)}")
    limit = request.args.get("limit", "50")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 500:
        return _error(400, "bad_request", "limit must be an integer from 1 to 500")
    limit = int(limit)
    type_, key = request.args.get("type") or None, request.args.get("key") or None
    for name, value, most in (("type", type_, MAX_TYPE), ("key", key, MAX_KEY)):
        if value is not None and len(value) > most:  # as documented: no stored event has a longer one
            return _error(400, "bad_request", f"{name} must be at most {most} characters")
    rows = queries.list_events(db.session, status=status, type=type_, key=key, limit=limit)
    return jsonify(counts=queries.counts(db.session), events=[queries.event_dict(r) for r in rows])


@bp.get("/outbox/<int:event_id>")
@require_token
def show_event(event_id):
    row = db.session.execute(select(OutboxEvent).where(OutboxEvent.id == event_id)).scalar_one_or_none()
    if row is None:
        return _error(404, "not_found", f"no outbox event {event_id}")
    return jsonify(queries.event_dict(row))


@bp.post("/cron/outbox/drain")
@require_cron_secret
def cron_drain():
    try:
        job_id = outbox.enqueue_drain()
    except Exception as exc:  # Redis down: say so, the caller's cron will come back
        return _error(503, "unavailable", f"could not enqueue the drain ({type(exc).__name__})")
    due = queries.counts(db.session)[outbox.PENDING]
    return jsonify(enqueued=job_id is not None, job_id=job_id, pending=due,
                   note=None if job_id else "a drain job is already queued"), 202
