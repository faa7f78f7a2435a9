"""Cron endpoints, for platforms without a supervisor daemon: an external
cron POSTs here with the shared secret (X-Cron-Secret or Authorization: Bearer; never a
query string), compared in constant time. POST /api/cron/<job> runs one of the periodic
jobs of webapp/periodic.py that make sense without a daemon; each is idempotent under
concurrent calls. (The outbox drain is POST /api/cron/outbox/drain, in outbox.py.)
"""
import dataclasses
import json
from datetime import date, datetime

import redis
from flask import jsonify

from .. import runs
from ..connectors.errors import ConfigError
from ..periodic import CRON_JOBS
from .blueprint import bp
from .auth import require_cron_secret
from .common import BAD_REQUEST, NOT_FOUND, UNAUTHORIZED, ApiError, find_connection, json_body, responses


def _jsonable(value):
    def default(obj):
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        if isinstance(obj, (datetime, date)):
            return obj.isoformat()
        return str(obj)

    return json.loads(json.dumps(value, default=default))


@bp.post("/cron/<job>")
@require_cron_secret
def run_job(job):
    if job not in CRON_JOBS:
        raise ApiError(404, "not_found", f"no cron job {job!r}; known: {', '.join(CRON_JOBS)}")
    try:
        result = CRON_JOBS[job].run(None)
    except (redis.RedisError, OSError) as exc:
        raise ApiError(503, "unavailable", f"Redis is unavailable ({type(exc).__name__}); call again later",
                       {"Retry-After": "30"}) from None
    return jsonify(job=job, result=_jsonable(result))


@bp.post("/cron/sync/<key>")
@require_cron_secret
def cron_sync(key):
    """A scheduled sync of one connection (trigger "schedule": manual-only connections and
    those whose trigger policy takes no schedule refuse).
    Concurrent calls get the same active run."""
    connection = find_connection(key)
    body = json_body()
    mode = body.get("mode", "incremental")
    params = body.get("params", {})
    if mode not in ("full", "incremental", "range") or not isinstance(params, dict):
        raise ApiError(400, "bad_request", "mode must be full, incremental or range; params an object")
    try:
        result = runs.trigger(connection, mode=mode, params=params, trigger="schedule", requested_by="cron")
    except ConfigError as exc:
        raise ApiError(409, "trigger_refused", str(exc)) from None
    return jsonify(runs.triggered_dict(result)), 201 if result.created else 200


_CRON = [{"cronSecret": []}, {"cronBearer": []}]

OPENAPI_PATHS = {
    "/api/cron/{job}": {"post": {
        "summary": "Run a maintenance job: " + "; ".join(f"{name}: {job.description}" for name, job in CRON_JOBS.items()),
        "security": _CRON, "tags": ["cron"],
        "parameters": [{"name": "job", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": list(CRON_JOBS)}}],
        "responses": responses(200, {"type": "object", "required": ["job", "result"], "properties": {
            "job": {"type": "string"}, "result": {"description": "what the job did"}}},
            UNAUTHORIZED, NOT_FOUND, (503, "Redis is unavailable; call again later")),
    }},
    "/api/cron/sync/{key}": {"post": {
        "summary": "Queue a scheduled sync of one connection (201 new run, 200 the active run)",
        "security": _CRON, "tags": ["cron"],
        "parameters": [{"name": "key", "in": "path", "required": True, "description": "connection id or name",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 100}}],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "properties": {
                "mode": {"type": "string", "enum": ["full", "incremental", "range"], "default": "incremental"},
                "params": {"type": "object"}}}}}},
        "responses": dict(
            responses(201, {"$ref": "#/components/schemas/TriggeredRun"}, BAD_REQUEST, UNAUTHORIZED, NOT_FOUND,
                      (409, "the connection refuses scheduled triggers (manual-only, its trigger policy "
                            "takes no schedule, or disabled)"),
                      description="a new run was queued"),
            **{"200": {"description": "a run was already active; it is returned instead",
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TriggeredRun"}}}}}),
    }},
}
