"""Connection issues over JSON (token): what is wrong with each connection, by cause
(webapp/connection_issues.py). Open ones by default; ?status=resolved|all for history."""
from flask import jsonify
from sqlalchemy import select

from .. import connection_issues
from ..extensions import db
from ..models import ConnectionIssue
from .auth import require_token
from .blueprint import bp
from .common import (BAD_REQUEST, CURSOR, NOT_FOUND, TOKEN, UNAUTHORIZED, choice, find_connection, page_args,
                     responses)

ISSUE_STATUSES = ("open", "resolved", "all")


def _list(connection=None):
    limit, cursor = page_args()
    status = choice("status", ISSUE_STATUSES) or "open"
    cause = choice("cause", connection_issues.CAUSES)
    query = select(ConnectionIssue).order_by(ConnectionIssue.id.desc()).limit(limit)
    if cursor is not None:
        query = query.where(ConnectionIssue.id < cursor)
    if connection is not None:
        query = query.where(ConnectionIssue.connection_id == connection.id)
    if status == "open":
        query = query.where(ConnectionIssue.resolved_at.is_(None))
    elif status == "resolved":
        query = query.where(ConnectionIssue.resolved_at.is_not(None))
    if cause:
        query = query.where(ConnectionIssue.cause == cause)
    rows = db.session.execute(query).scalars().all()
    body = {"issues": [issue.to_dict() for issue in rows], "next_cursor": rows[-1].id if len(rows) == limit else None}
    if connection is not None:
        body["paused"] = connection_issues.describe_pause(connection)
    return jsonify(body)


@bp.get("/issues")
@require_token
def list_issues():
    return _list()


@bp.get("/connections/<key>/issues")
@require_token
def connection_issues_list(key):
    return _list(find_connection(key))


_ISSUE = {"type": "object", "required": ["id", "connection_id", "cause", "status", "opened_at", "occurrences"],
          "properties": {
              "id": {"type": "integer"}, "connection_id": {"type": "integer"},
              "connection": {"type": "string", "nullable": True},
              "cause": {"type": "string", "enum": list(connection_issues.CAUSES)},
              "status": {"type": "string", "enum": ["open", "resolved"]},
              "opened_at": {"type": "string", "format": "date-time"},
              "last_seen_at": {"type": "string", "format": "date-time"},
              "resolved_at": {"type": "string", "format": "date-time", "nullable": True},
              "resolution": {"type": "string", "nullable": True},
              "occurrences": {"type": "integer"},
              "last_message": {"type": "string", "nullable": True},
              "run_ids": {"type": "array", "items": {"type": "integer"}}}}
_PARAMS = [
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(ISSUE_STATUSES), "default": "open"}},
    {"name": "cause", "in": "query", "schema": {"type": "string", "enum": list(connection_issues.CAUSES)}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
    CURSOR,
]
_LIST = {"type": "object", "required": ["issues", "next_cursor"], "properties": {
    "issues": {"type": "array", "items": _ISSUE}, "next_cursor": {"type": "integer", "nullable": True}}}

OPENAPI_PATHS = {
    "/api/issues": {"get": {
        "summary": "Connection issues by cause (open ones by default), newest first", "security": TOKEN,
        "tags": ["issues"], "parameters": _PARAMS,
        "responses": responses(200, _LIST, BAD_REQUEST, UNAUTHORIZED),
    }},
    "/api/connections/{key}/issues": {"get": {
        "summary": "One connection's issues, and whether it is paused", "security": TOKEN, "tags": ["issues"],
        "parameters": [{"name": "key", "in": "path", "required": True, "description": "connection id or name",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 100}}, *_PARAMS],
        "responses": responses(200, {**_LIST, "properties": {
            **_LIST["properties"], "paused": {"type": "string", "nullable": True,
                                              "description": "why and since when it is paused; null when not"}}},
            BAD_REQUEST, UNAUTHORIZED, NOT_FOUND),
    }},
}
