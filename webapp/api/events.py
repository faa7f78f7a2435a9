"""App event triggers (scenario S5 in README): the app says something happened; the syncs
configured for that event type are queued and the call returns at once (202).

Per connection, in settings["event_triggers"]:

    {"fiscal_year.created": {"mode": "range", "params": {"fiscal_year": "{data.fiscal_year}"},
                             "streams": ["tickets"]}}

A parameter that is exactly "{data.<path>}" takes the event's value with its type (2027
stays a number); a reference inside a longer string is formatted into it.

A sync already active on a connection with the same parameters is returned; one with other
parameters (another fiscal year, say) gets a waiting follow-up, which starts when the
active sync ends: an event is never lost for meeting a running sync (runs.trigger).

A connection that refuses the trigger (its trigger policy takes no events, it is disabled,
the event lacks a parameter) is listed under "refused" with the reason, and the others
still get their runs (202). When every configured connection refused, nothing was started:
409, with the same lists.
"""
import re

from flask import jsonify
from sqlalchemy import select

from .. import runs
from ..extensions import db
from ..models import STATUSES, Connection
from .blueprint import bp
from .auth import require_token
from .common import BAD_REQUEST, TOKEN, UNAUTHORIZED, ApiError, json_body, responses

EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
REFERENCE = re.compile(r"\{data\.([A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\}")


class MissingField(Exception):
    pass


def _lookup(data, path):
    value = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise MissingField(f"the event's data has no {path}")
        value = value[part]
    return value


def resolve(template, data):
    """Fill {data.x} references in a params template (recursively through dicts and lists)."""
    if isinstance(template, dict):
        return {k: resolve(v, data) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve(v, data) for v in template]
    if isinstance(template, str):
        whole = REFERENCE.fullmatch(template)
        if whole:
            return _lookup(data, whole.group(1))
        return REFERENCE.sub(lambda m: str(_lookup(data, m.group(1))), template)
    return template


def configured(event_type):
    """(connection, config) for every connection with a trigger for this event type."""
    rows = db.session.execute(select(Connection).order_by(Connection.id)).scalars().all()
    for connection in rows:
        triggers = (connection.settings or {}).get("event_triggers") or {}
        config = triggers.get(event_type) if isinstance(triggers, dict) else None
        if isinstance(config, dict):
            yield connection, config


def fire(event_type, data):
    """Queue the configured syncs. Returns (runs, refused); never waits for a sync."""
    queued, refused = [], []
    for connection, config in configured(event_type):
        try:
            params = resolve(config.get("params") or {}, data)
            streams = config.get("streams") or []
            result = runs.trigger(connection, mode=config.get("mode", "full"), params=params, streams=streams,
                                  trigger="event", requested_by=f"event:{event_type}")
        except (MissingField, runs.TriggerRefused) as exc:
            refused.append({"connection": connection.name, "reason": str(exc)})
            continue
        queued.append({"run_id": result.run.id, "connection": connection.name, "created": result.created,
                       "outcome": result.outcome, "status": result.run.status, "mode": result.run.mode,
                       "params": result.run.params, "active_run_id": result.active.id if result.active else None,
                       "waiting_reason": runs.waiting_reason(result.run)})
    return queued, refused


@bp.post("/events")
@require_token
def post_event():
    body = json_body()
    event_type, data = body.get("type"), body.get("data", {})
    if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type):
        raise ApiError(400, "bad_request", "type must be an event name like fiscal_year.created (letters, digits, _ . : -)")
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "data must be an object")
    queued, refused = fire(event_type, data)
    if refused and not queued:
        reason = "; ".join(f"{r['connection']}: {r['reason']}" for r in refused)
        return jsonify(error="trigger_refused", reason=f"no sync was started ({reason})", type=event_type,
                       runs=queued, refused=refused), 409
    return jsonify(type=event_type, runs=queued, refused=refused), 202


_REFUSED = {"type": "array", "items": {"type": "object", "required": ["connection", "reason"], "properties": {
    "connection": {"type": "string"}, "reason": {"type": "string"}}}}

OPENAPI_PATHS = {
    "/api/events": {"post": {
        "summary": "Tell synchub an app event happened; the syncs configured for it are queued (202, non-blocking)",
        "security": TOKEN, "tags": ["events"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["type"], "properties": {
                "type": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,100}$", "example": "fiscal_year.created"},
                "data": {"type": "object", "example": {"fiscal_year": 2027}}}}}}},
        "responses": dict(
            responses(202, {"type": "object", "required": ["type", "runs", "refused"], "properties": {
                "type": {"type": "string"},
                "runs": {"type": "array", "items": {"type": "object", "required": ["run_id", "connection", "created", "status"],
                                                    "properties": {"run_id": {"type": "integer"}, "connection": {"type": "string"},
                                                                   "created": {"type": "boolean"},
                                                                   "outcome": {"type": "string", "enum": list(runs.TRIGGER_OUTCOMES),
                                                                               "description": "as for POST /api/connections/{key}/runs"},
                                                                   "status": {"type": "string", "enum": list(STATUSES)},
                                                                   "mode": {"type": "string"}, "params": {"type": "object"},
                                                                   "active_run_id": {"type": "integer", "nullable": True,
                                                                                     "description": "the active sync a follow-up waits for"},
                                                                   "waiting_reason": {"type": "string", "nullable": True}}}},
                "refused": _REFUSED}},
                BAD_REQUEST, UNAUTHORIZED, description="accepted; the runs are queued"),
            **{"409": {"description": "every connection configured for this event refused it (its trigger policy "
                                      "takes no events, it is disabled, the event lacks a parameter): no sync was started",
                       "content": {"application/json": {"schema": {"allOf": [
                           {"$ref": "#/components/schemas/Error"},
                           {"type": "object", "required": ["runs", "refused"], "properties": {
                               "type": {"type": "string"}, "runs": {"type": "array", "maxItems": 0},
                               "refused": _REFUSED}}]}}}}}),
    }},
}
