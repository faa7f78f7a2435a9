"""GET /api/openapi.json: the API described from the same modules that implement it.

Each module in API_MODULES may define OPENAPI_PATHS ({path: {method: operation}}) and
OPENAPI_SCHEMAS ({name: schema}) beside its routes; this module merges them. tests/webapp/api/test_openapi.py fails when a route under
/api has no description, and schemathesis checks responses against it.
"""
import importlib

from flask import jsonify

from ..models import MODES, OUTBOX_STATUSES, STATUSES, TRIGGERS
from ..outbox.publish import MAX_IDEMPOTENCY_KEY, MAX_KEY, MAX_TYPE
from ..runs import TRIGGER_OUTCOMES
from ..trigger_policy import POLICY_TRIGGERS
from .blueprint import API_MODULES, bp
from .common import NO_NUL, NOT_BLANK

_NULLABLE_STRING = {"type": "string", "nullable": True}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

COMPONENTS = {
    "securitySchemes": {
        "bearerToken": {"type": "http", "scheme": "bearer", "description": "an API token from `flask tokens create NAME`"},
        "cronSecret": {"type": "apiKey", "in": "header", "name": "X-Cron-Secret",
                       "description": "the shared secret SYNCHUB_CRON_SECRET"},
        "cronBearer": {"type": "http", "scheme": "bearer", "description": "the shared secret SYNCHUB_CRON_SECRET"},
    },
    "schemas": {
        "Error": {"type": "object", "required": ["error", "reason"], "properties": {
            "error": {"type": "string", "description": "a stable code, e.g. not_found"},
            "reason": {"type": "string", "description": "what went wrong, for a person"}}},
        "Counters": {"type": "object", "required": ["seen", "created", "updated", "unchanged", "deleted", "failed"],
                     "properties": {k: {"type": "integer"} for k in ("seen", "created", "updated", "unchanged", "deleted", "failed")}},
        "Run": {"type": "object", "required": ["id", "connection_id", "status", "mode", "trigger", "counters", "created_at"],
                "properties": {
                    "id": {"type": "integer"},
                    "connection_id": {"type": "integer"},
                    "connection": _NULLABLE_STRING,
                    "streams": {"type": "array", "items": {"type": "string"}},
                    "mode": {"type": "string", "enum": list(MODES)},
                    "params": {"type": "object"},
                    "record_key": _NULLABLE_STRING,
                    "trigger": {"type": "string", "enum": list(TRIGGERS)},
                    "requested_by": _NULLABLE_STRING,
                    "status": {"type": "string", "enum": list(STATUSES)},
                    "attempt": {"type": "integer"},
                    "max_attempts": {"type": "integer"},
                    "counters": {"$ref": "#/components/schemas/Counters"},
                    "phase": _NULLABLE_STRING,
                    "processed": {"type": "integer"},
                    "total": {"type": "integer", "nullable": True},
                    "percent": {"type": "number", "nullable": True},
                    "heartbeat_at": _NULLABLE_TIME,
                    "created_at": {"type": "string", "format": "date-time"},
                    "started_at": _NULLABLE_TIME,
                    "finished_at": _NULLABLE_TIME,
                    "error_class": _NULLABLE_STRING,
                    "error_message": _NULLABLE_STRING,
                    "cancel_requested": {"type": "boolean"},
                    "not_before": {**_NULLABLE_TIME, "description": "waiting: not queued before this instant "
                                                                    "(a provider's rate limit, a pause between attempts)"},
                    "deferrals": {"type": "integer", "description": "times the run waited out a long rate limit"},
                    "stream_counters": {"type": "object", "description": "the counters stream by stream",
                                        "additionalProperties": {"$ref": "#/components/schemas/Counters"}},
                    "waiting_reason": {**_NULLABLE_STRING, "description": "waiting: why, in words"}}},
        "TriggeredRun": {"type": "object", "required": ["run", "created", "outcome"], "properties": {
            "run": {"$ref": "#/components/schemas/Run"},
            "created": {"type": "boolean", "description": "a new run was made (queued, or waiting as a follow-up)"},
            "outcome": {"type": "string", "enum": list(TRIGGER_OUTCOMES), "description":
                        "queued: a new run starts now; follow_up: a new run waits for the active sync "
                        "(active_run) to end; active: the active sync has these parameters and is returned; "
                        "coalesced: an identical run was already waiting and is returned; skipped: a scheduled "
                        "slot met an active sync (overlap policy skip)"},
            "active_run": {"allOf": [{"$ref": "#/components/schemas/Run"}], "nullable": True,
                           "description": "the connection's active sync, when the run returned waits for it"}}},
        "RunEvent": {"type": "object", "required": ["id", "at", "level", "kind", "message"], "properties": {
            "id": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
            "level": {"type": "string"}, "kind": {"type": "string", "enum": ["log", "record_error"]},
            "stream": _NULLABLE_STRING, "record_key": _NULLABLE_STRING, "message": {"type": "string"}}},
        "Connection": {"type": "object", "required": ["id", "name", "connector", "schedule", "enabled", "health"],
                       "properties": {
                           "id": {"type": "integer"}, "name": {"type": "string"}, "connector": {"type": "string"},
                           "schedule": {"type": "string"}, "enabled": {"type": "boolean"},
                           "allowed_triggers": {"type": "array", "description": "the triggers that may start its runs "
                                                "(its trigger policy; cli counts as manual)",
                                                "items": {"type": "string", "enum": list(POLICY_TRIGGERS)}},
                           "health": {"type": "string", "enum": ["ok", "failing", "needs_reauth"]},
                           "health_message": _NULLABLE_STRING, "next_run_at": _NULLABLE_TIME,
                           "has_credentials": {"type": "boolean"}, "webhook_url": {"type": "string"},
                           "paused": {"type": "string", "nullable": True,
                                      "description": "paused (scheduled and event runs refused): why and since "
                                                     "when; null when not paused"}}},
    },
}

OPENAPI_PATHS = {
    "/api/openapi.json": {"get": {
        "summary": "This document", "tags": ["meta"], "security": [],
        "responses": {"200": {"description": "OpenAPI 3.0 document",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    }},
}


_TOKEN = [{"bearerToken": []}]
_CRON = [{"cronSecret": []}, {"cronBearer": []}]


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description):
    return _json({"$ref": "#/components/schemas/Error"}, description)


_OUTBOX_EVENT = {"type": "object", "required": ["id", "type", "key", "status", "attempts"], "properties": {
    "id": {"type": "integer"}, "connection_id": {"type": "integer", "nullable": True},
    "type": {"type": "string"}, "key": {"type": "string"}, "payload": {"type": "object"},
    "idempotency_key": {"type": "string"}, "status": {"type": "string", "enum": list(OUTBOX_STATUSES)},
    "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
    "next_attempt_at": _NULLABLE_TIME, "last_error": _NULLABLE_STRING,
    "created_at": _NULLABLE_TIME, "delivered_at": _NULLABLE_TIME}}
_PUBLISH_ONE = {"type": "object", "required": ["type", "key"], "additionalProperties": False, "properties": {
    "type": {"type": "string", "minLength": 1, "maxLength": MAX_TYPE, "pattern": NOT_BLANK},
    "key": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": NOT_BLANK},
    "payload": {"type": "object"},
    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": NOT_BLANK},
    "connection": {"description": "connection id or name (default: every destination mapping the type)",
                   "nullable": True, "anyOf": [{"type": "string", "minLength": 1, "maxLength": 100, "pattern": NO_NUL},
                                               {"type": "integer", "minimum": 0}]}}}

# Descriptions of routes whose module does not (yet) carry its own OPENAPI_PATHS; a module
# that defines OPENAPI_PATHS replaces its entry here.
ELSEWHERE = {
    "outbox": {
        "/api/outbox": {
            "post": {
                "summary": "Publish an app event (or {\"events\": [...]}, at most 100) into the outbox",
                "security": _TOKEN, "tags": ["outbox"],
                "parameters": [{"name": "Idempotency-Key", "in": "header",
                                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY,
                                           "pattern": NOT_BLANK}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    _PUBLISH_ONE,
                    {"type": "object", "required": ["events"], "properties": {
                        "events": {"type": "array", "minItems": 1, "maxItems": 100, "items": _PUBLISH_ONE}}}]}}}},
                "responses": {
                    "202": _json({"type": "object", "properties": {
                        "event_ids": {"type": "array", "items": {"type": "integer"}}, "duplicate": {"type": "boolean"},
                        "events": {"type": "array", "items": {"type": "object"}}}}, "stored; delivery follows"),
                    "400": _error("the body is not a JSON object, or events is not a list of 1 to 100"),
                    "401": _error("missing or invalid API token"),
                    "409": _error("no destination maps the event's type, or the connection it names is unknown "
                                  "or not an outbound destination"),
                    "422": _error("an event was refused (bad fields, a mapping its payload cannot satisfy)")},
            },
            "get": {
                "summary": "Recent outbox events, newest first, with counts per status",
                "security": _TOKEN, "tags": ["outbox"],
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(OUTBOX_STATUSES)}},
                    {"name": "type", "in": "query", "schema": {"type": "string", "maxLength": MAX_TYPE}},
                    {"name": "key", "in": "query", "schema": {"type": "string", "maxLength": MAX_KEY}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": {
                    "200": _json({"type": "object", "required": ["counts", "events"], "properties": {
                        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "events": {"type": "array", "items": _OUTBOX_EVENT}}}, "OK"),
                    "400": _error("bad filter"), "401": _error("missing or invalid API token")},
            },
        },
        "/api/outbox/{event_id}": {"get": {
            "summary": "One outbox event", "security": _TOKEN, "tags": ["outbox"],
            "parameters": [{"name": "event_id", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}],
            "responses": {"200": _json(_OUTBOX_EVENT, "OK"), "401": _error("missing or invalid API token"),
                          "404": _error("no such event")},
        }},
        "/api/cron/outbox/drain": {"post": {
            "summary": "Queue a drain of the outbox (at most one drain job waits at a time)",
            "security": _CRON, "tags": ["cron"],
            "responses": {
                "202": _json({"type": "object", "required": ["enqueued", "job_id"], "properties": {
                    "enqueued": {"type": "boolean"}, "job_id": _NULLABLE_STRING, "pending": {"type": "integer"},
                    "note": _NULLABLE_STRING}}, "a drain job is queued (or one already was)"),
                "401": _error("missing or wrong cron secret"), "503": _error("Redis is unavailable")},
        }},
    },
}


# What any operation may answer before (or besides) its own logic: the web server refuses a
# request line that is too long (gunicorn: over 4094 bytes), and the API refuses NUL in a
# path or query string and a body that is not the JSON it takes (webapp/api/common.py).
_ANY_OPERATION = {"414": {"description": "the request line (URL) is too long for the web server"}}
_WITH_INPUT = {"400": _error("invalid input: a NUL character in the query string, or a malformed body")}


def _as_served(operation):
    """The operation with what every API route does: _ANY_OPERATION's answers, and for one
    that takes input, the 400 and the NO_NUL pattern on each free-text parameter."""
    parameters = operation.get("parameters") or []
    operation["parameters"] = [_no_nul(p) for p in parameters] if parameters else parameters
    answers = operation["responses"] = dict(operation.get("responses") or {})
    extra = dict(_ANY_OPERATION, **(_WITH_INPUT if operation.get("parameters") or operation.get("requestBody") else {}))
    for status, answer in extra.items():
        answers.setdefault(status, answer)
    return operation


def _no_nul(parameter):
    schema = parameter.get("schema") or {}
    if parameter.get("in") in ("query", "path") and schema.get("type") == "string" and not (
            schema.get("enum") or schema.get("pattern")):
        return dict(parameter, schema=dict(schema, pattern=NO_NUL))
    return parameter


def document():
    paths, schemas = {}, dict(COMPONENTS["schemas"])
    for name in API_MODULES:
        module = importlib.import_module(f"{__package__}.{name}")
        described = getattr(module, "OPENAPI_PATHS", None)
        for path, operations in (described if described is not None else ELSEWHERE.get(name, {})).items():
            paths.setdefault(path, {}).update({m: _as_served(dict(op)) for m, op in operations.items()})
        schemas.update(getattr(module, "OPENAPI_SCHEMAS", {}))
    return {
        "openapi": "3.0.3",
        "info": {"title": "synchub API", "version": "1",
                 "description": "Runs, connections, app events and cron jobs. Errors are "
                                "{\"error\": <stable code>, \"reason\": <text>}."},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": dict(COMPONENTS, schemas=schemas),
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document())
