"""Runs and connections over JSON: trigger, list, inspect, cancel, events.
Every route needs an API token (`flask tokens create NAME`). Credentials never leave."""
from flask import jsonify, request
from sqlalchemy import select

from .. import connection_issues, run_request, runs
from ..connectors.errors import ConfigError
from ..extensions import db, redis_ext
from ..models import MODES, STATUSES, TERMINAL_STATUSES, TRIGGERS, Connection, Run, RunEvent
from ..progress import read_snapshot
from .blueprint import bp
from .auth import require_token
from .common import (BAD_REQUEST, CURSOR, NOT_FOUND, TOKEN, UNAUTHORIZED, ApiError, choice, find_connection,
                     json_body, page_args, parse_id, responses)

API_MODES = run_request.REQUEST_MODES


def connection_dict(connection):
    return {
        "id": connection.id,
        "name": connection.name,
        "connector": connection.connector,
        "schedule": connection.schedule,
        "enabled": connection.enabled,
        "allowed_triggers": list(connection.allowed_triggers),
        "health": connection.health,
        "health_message": connection.health_message,
        "next_run_at": connection.next_run_at.isoformat() + "Z" if connection.next_run_at else None,
        "has_credentials": bool(connection.credentials_encrypted),
        "paused": connection_issues.describe_pause(connection),
        "webhook_url": f"/webhooks/{connection.id}",
    }


@bp.get("/connections")
@require_token
def list_connections():
    rows = db.session.execute(select(Connection).order_by(Connection.id)).scalars().all()
    return jsonify(connections=[connection_dict(c) for c in rows])


@bp.get("/connections/<key>")
@require_token
def show_connection(key):
    connection = find_connection(key)
    active = runs.active_run(connection.id)
    return jsonify(connection=connection_dict(connection), active_run=runs.run_dict(active) if active else None)


@bp.post("/connections/<key>/runs")
@require_token
def trigger_run(key):
    """201 with a new run (queued, or waiting to follow the active sync), or 200 with the
    run that already serves this request (the active sync, or an identical waiting one)."""
    connection = find_connection(key)
    body = json_body()
    if body.get("mode", "full") not in API_MODES:
        raise ApiError(400, "bad_request", f"mode must be one of {', '.join(API_MODES)}")
    if not isinstance(body.get("params", {}), dict):
        raise ApiError(400, "bad_request", "params must be an object")
    streams = body.get("streams", [])
    if not (isinstance(streams, list) and all(isinstance(s, str) for s in streams)):
        raise ApiError(400, "bad_request", "streams must be a list of stream names")
    try:
        wanted = run_request.check(connection, mode=body.get("mode", "full"), params=body.get("params", {}),
                                   streams=body.get("streams", []))
    except run_request.UnknownStream as exc:
        # Well-formed, but not what this connection's connector has: like a refused trigger, 409.
        raise ApiError(409, "unknown_stream", str(exc)) from None
    except run_request.RunRequestError as exc:
        # The body's shapes are the schema's (400 below them); what is left is what this
        # connection cannot run as asked (a range without dates, a fiscal year it lacks...): 409.
        raise ApiError(409, "run_refused", str(exc)) from None
    except ConfigError as exc:
        raise ApiError(409, "trigger_refused", str(exc)) from None
    try:
        result = runs.trigger(connection, mode=wanted.mode, params=wanted.params, streams=wanted.streams,
                              trigger="api", requested_by="api")
    except runs.TriggerRefused as exc:
        raise ApiError(409, "trigger_refused", str(exc)) from None
    return jsonify(runs.triggered_dict(result)), 201 if result.created else 200


@bp.get("/runs")
@require_token
def list_runs():
    limit, cursor = page_args()
    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if cursor is not None:
        query = query.where(Run.id < cursor)
    if request.args.get("connection") is not None:
        query = query.where(Run.connection_id == find_connection(request.args["connection"]).id)
    for name, allowed, column in (("status", STATUSES, Run.status), ("trigger", TRIGGERS, Run.trigger),
                                  ("mode", MODES, Run.mode)):
        value = choice(name, allowed)
        if value is not None:
            query = query.where(column == value)
    rows = db.session.execute(query).scalars().all()
    return jsonify(runs=[runs.run_dict(r) for r in rows], next_cursor=rows[-1].id if len(rows) == limit else None)


def _run(run_id):
    run = db.session.get(Run, parse_id(run_id))
    if run is None:
        raise ApiError(404, "not_found", f"no run {run_id}")
    return run


@bp.get("/runs/<run_id>")
@require_token
def show_run(run_id):
    """The row (persisted progress and counters) plus the live snapshot when Redis has one."""
    run = _run(run_id)
    client = redis_ext.optional()
    return jsonify(run=runs.run_dict(run), progress=read_snapshot(client, run.id) if client is not None else None)


@bp.post("/runs/<run_id>/cancel")
@require_token
def cancel_run(run_id):
    run = _run(run_id)
    if run.status in TERMINAL_STATUSES:
        raise ApiError(409, "not_active", f"run {run.id} is already {run.status}")
    status = runs.cancel(run.id, requested_by="api")
    db.session.refresh(run)
    return jsonify(run=runs.run_dict(run), status=status)


@bp.get("/runs/<run_id>/events")
@require_token
def run_events(run_id):
    """The activity log and per-record errors (?kind=record_error), oldest first."""
    run = _run(run_id)
    limit, cursor = page_args()
    kind = choice("kind", ("log", "record_error"))
    query = select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id).limit(limit)
    if cursor is not None:
        query = query.where(RunEvent.id > cursor)
    if kind:
        query = query.where(RunEvent.kind == kind)
    rows = db.session.execute(query).scalars().all()
    return jsonify(events=[e.to_dict() for e in rows], next_cursor=rows[-1].id if len(rows) == limit else None)


# -- OpenAPI -----------------------------------------------------------------------------

_RUN = {"$ref": "#/components/schemas/Run"}
_CONNECTION_KEY = {"name": "key", "in": "path", "required": True, "description": "connection id or name",
                   "schema": {"type": "string", "minLength": 1, "maxLength": 100}}
_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}
_NEXT = {"type": "integer", "nullable": True}

OPENAPI_PATHS = {
    "/api/connections": {"get": {
        "summary": "List connections (never their credentials)", "security": TOKEN, "tags": ["connections"],
        "responses": responses(200, {"type": "object", "required": ["connections"], "properties": {
            "connections": {"type": "array", "items": {"$ref": "#/components/schemas/Connection"}}}}, UNAUTHORIZED),
    }},
    "/api/connections/{key}": {"get": {
        "summary": "Show a connection and its active run", "security": TOKEN, "tags": ["connections"],
        "parameters": [_CONNECTION_KEY],
        "responses": responses(200, {"type": "object", "required": ["connection", "active_run"], "properties": {
            "connection": {"$ref": "#/components/schemas/Connection"},
            "active_run": {"allOf": [_RUN], "nullable": True}}}, UNAUTHORIZED, NOT_FOUND),
    }},
    "/api/connections/{key}/runs": {"post": {
        "summary": "Trigger a sync: 201 with a new run (queued, or waiting to follow the active sync when its "
                   "parameters differ), or 200 with the run that already serves it",
        "security": TOKEN, "tags": ["runs"], "parameters": [_CONNECTION_KEY],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {
                "mode": {"type": "string", "enum": list(API_MODES), "default": "full"},
                "params": {"type": "object", "description": "since, until, fiscal_year, ... (connector parameters)"},
                "streams": {"type": "array", "items": {"type": "string"}}}}}}},
        "responses": dict(
            responses(201, {"$ref": "#/components/schemas/TriggeredRun"}, BAD_REQUEST, UNAUTHORIZED, NOT_FOUND,
                      (409, "the connection refuses this trigger: its trigger policy takes no API triggers, "
                            "it cannot run (unknown connector), its connector has no such stream, or it cannot run "
                            "as asked (a date range without dates, a fiscal year it does not list...)"),
                      description="a new run was queued"),
            **{"200": {"description": "the active sync has these parameters, or an identical run already waits: "
                                      "it is returned instead",
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TriggeredRun"}}}}}),
    }},
    "/api/runs": {"get": {
        "summary": "List runs, newest first, with filters and keyset pagination", "security": TOKEN, "tags": ["runs"],
        "parameters": [
            {"name": "connection", "in": "query", "description": "connection id or name",
             "schema": {"type": "string", "maxLength": 100}},
            {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
            {"name": "trigger", "in": "query", "schema": {"type": "string", "enum": list(TRIGGERS)}},
            {"name": "mode", "in": "query", "schema": {"type": "string", "enum": list(MODES)}},
            _LIMIT, CURSOR],
        "responses": responses(200, {"type": "object", "required": ["runs", "next_cursor"], "properties": {
            "runs": {"type": "array", "items": _RUN}, "next_cursor": _NEXT}}, BAD_REQUEST, UNAUTHORIZED, NOT_FOUND),
    }},
    "/api/runs/{run_id}": {"get": {
        "summary": "Show a run with its counters, progress and live snapshot", "security": TOKEN, "tags": ["runs"],
        "parameters": [_RUN_ID],
        "responses": responses(200, {"type": "object", "required": ["run", "progress"], "properties": {
            "run": _RUN, "progress": {"type": "object", "nullable": True,
                                      "description": "live snapshot from Redis; null when none or Redis is away"}}},
            UNAUTHORIZED, NOT_FOUND),
    }},
    "/api/runs/{run_id}/cancel": {"post": {
        "summary": "Cancel a waiting, queued or running run", "security": TOKEN, "tags": ["runs"], "parameters": [_RUN_ID],
        "responses": responses(200, {"type": "object", "required": ["run", "status"], "properties": {
            "run": _RUN, "status": {"type": "string", "enum": list(STATUSES)}}},
            UNAUTHORIZED, NOT_FOUND, (409, "the run has already finished")),
    }},
    "/api/runs/{run_id}/events": {"get": {
        "summary": "A run's activity log and record errors, oldest first", "security": TOKEN, "tags": ["runs"],
        "parameters": [_RUN_ID, {"name": "kind", "in": "query", "schema": {"type": "string", "enum": ["log", "record_error"]}},
                       _LIMIT, CURSOR],
        "responses": responses(200, {"type": "object", "required": ["events", "next_cursor"], "properties": {
            "events": {"type": "array", "items": {"$ref": "#/components/schemas/RunEvent"}}, "next_cursor": _NEXT}},
            BAD_REQUEST, UNAUTHORIZED, NOT_FOUND),
    }},
}
