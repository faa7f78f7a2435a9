"""Synced records of one stream as a changes feed (token):

    GET /api/connections/<key>/streams/<stream>/records?since=<cursor>&limit=100

Records come in the order they last changed (created, updated or soft-deleted), each once
per change, with an opaque `next_cursor` to pass as `since`. A record changed again after
it was read appears again later, so a reader that keeps the latest copy per id stays in step.

Writes are stamped before their transaction commits, so the newest changes (setting
RECORDS_FEED_SETTLE_SECONDS, webapp/config.py) are held back: a page committed a moment later with a slightly
older stamp is not skipped.
"""
import base64
import binascii
import json
from datetime import datetime, timedelta

from flask import current_app, jsonify, request
from sqlalchemy import and_, case, or_, select

from ..connectors import connector_class
from ..connectors.errors import ConfigError
from ..extensions import db
from ..models import Record, utcnow
from .blueprint import bp
from .auth import require_token
from .common import BAD_REQUEST, NOT_FOUND, TOKEN, UNAUTHORIZED, ApiError, find_connection, page_args, responses

_CHANGED_AT = case((and_(Record.deleted_at.is_not(None), Record.deleted_at > Record.last_changed_at), Record.deleted_at),
                   else_=Record.last_changed_at)


def encode_cursor(changed_at, row_id):
    raw = json.dumps({"t": changed_at.isoformat(), "i": row_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text):
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return datetime.fromisoformat(value["t"]), int(value["i"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ApiError(400, "bad_request", "since must be a next_cursor returned by this endpoint") from None


def _change(record, changed_at):
    if record.deleted_at is not None and changed_at == record.deleted_at:
        return "deleted"
    return "created" if record.first_seen_at == record.last_changed_at else "updated"


@bp.get("/connections/<key>/streams/<stream>/records")
@require_token
def stream_records(key, stream):
    connection = find_connection(key)
    try:
        known = {s.name for s in connector_class(connection.connector).streams}
    except ConfigError:
        known = set()
    if stream not in known:
        raise ApiError(404, "not_found", f"connection {connection.name!r} has no stream {stream!r}")
    limit, _ = page_args()
    query = (select(Record, _CHANGED_AT.label("changed_at"))
             .where(Record.connection_id == connection.id, Record.stream == stream,
                    _CHANGED_AT <= utcnow() - timedelta(seconds=current_app.config["RECORDS_FEED_SETTLE_SECONDS"]))
             .order_by(_CHANGED_AT, Record.id).limit(limit))
    since = request.args.get("since")
    if since:
        at, row_id = decode_cursor(since)
        query = query.where(or_(_CHANGED_AT > at, and_(_CHANGED_AT == at, Record.id > row_id)))
    rows = db.session.execute(query).all()
    records = [{"id": r.external_id, "change": _change(r, changed_at), "changed_at": changed_at.isoformat() + "Z",
                "deleted": r.deleted_at is not None, "data": r.data} for r, changed_at in rows]
    next_cursor = encode_cursor(rows[-1][1], rows[-1][0].id) if rows else since
    return jsonify(records=records, next_cursor=next_cursor, has_more=len(rows) == limit)


OPENAPI_PATHS = {
    "/api/connections/{key}/streams/{stream}/records": {"get": {
        "summary": "A stream's records as a changes feed: created, updated and deleted after ?since=<cursor>",
        "security": TOKEN, "tags": ["records"],
        "parameters": [
            {"name": "key", "in": "path", "required": True, "description": "connection id or name",
             "schema": {"type": "string", "minLength": 1, "maxLength": 100}},
            {"name": "stream", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1, "maxLength": 100}},
            {"name": "since", "in": "query", "description": "next_cursor of the previous call; omit to start from the beginning",
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}],
        "responses": responses(200, {"type": "object", "required": ["records", "next_cursor", "has_more"], "properties": {
            "records": {"type": "array", "items": {"type": "object", "required": ["id", "change", "changed_at", "deleted", "data"],
                                                   "properties": {
                                                       "id": {"type": "string"},
                                                       "change": {"type": "string", "enum": ["created", "updated", "deleted"]},
                                                       "changed_at": {"type": "string", "format": "date-time"},
                                                       "deleted": {"type": "boolean"},
                                                       "data": {"type": "object"}}}},
            "next_cursor": {"type": "string", "nullable": True,
                            "description": "pass as since; unchanged when there was nothing new"},
            "has_more": {"type": "boolean"}}}, BAD_REQUEST, UNAUTHORIZED, NOT_FOUND),
    }},
}
