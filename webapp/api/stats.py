"""Health and statistics over JSON (token): what the admin's health page shows, and run
outcomes over a window, from the finished runs' roll-ups and the active runs (webapp/stats.py;
never made up)."""
from datetime import timedelta

from flask import jsonify, request
from .. import stats
from ..health import health_report, readiness
from ..models import STATUSES
from .blueprint import bp
from .auth import require_token
from .common import BAD_REQUEST, NOT_FOUND, TOKEN, UNAUTHORIZED, ApiError, find_connection, responses

MAX_DAYS = 365


def _iso(value):
    return value.isoformat() + "Z" if value else None


@bp.get("/health")
@require_token
def api_health():
    """200 when the database and Redis answer, 503 otherwise; the body says what is wrong."""
    checks = readiness()
    ok = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    if checks["database"] == "ok":
        report = health_report()
        body.update({
            "queues": report["queues"],
            "workers": len(report["workers"]),
            "running": report["running"],
            "queued": report["queued"],
            "oldest_queued_at": _iso(report["oldest_queued_at"]),
            "stale_runs": [run.id for run in report["stale_runs"]],
            "leader": report["leader"],
            "open_alerts": [{"kind": a.kind, "subject": a.subject, "message": a.message, "fired_at": _iso(a.fired_at)}
                            for a in report["alerts"]],
        })
    return jsonify(body), 200 if ok else 503


def series_bucket(days):
    """The period of the time series: hours for a day, quarter days for a week, then days."""
    for limit, bucket in ((1, timedelta(hours=1)), (7, timedelta(hours=6)), (30, timedelta(days=1)),
                          (90, timedelta(days=3))):
        if days <= limit:
            return bucket
    return timedelta(days=7)


@bp.get("/stats")
@require_token
def api_stats():
    """Runs created in the last ?days=N (default 7) in whole periods of the series,
    optionally of one ?connection=: the whole window's figures and the series."""
    days = request.args.get("days", "7")
    if not (days.isascii() and days.isdigit()) or not 1 <= int(days) <= MAX_DAYS:
        raise ApiError(400, "bad_request", f"days must be an integer from 1 to {MAX_DAYS}")
    connection = None
    if request.args.get("connection") is not None:
        connection = find_connection(request.args["connection"])
    series = stats.run_stats(stats.window_of(timedelta(days=int(days)), series_bucket(int(days))), connection)
    total = series.total
    return jsonify(
        bucket_seconds=int(series.window.bucket.total_seconds()),
        series=[bucket.as_dict() for bucket in series.buckets],
        since=_iso(series.window.since), until=_iso(series.window.until),
        connection=connection.name if connection else None, runs=total.runs,
        by_status={status: total.by_status.get(status, 0) for status in STATUSES},
        success_rate=None if total.success_rate is None else round(total.success_rate, 4),
        duration_seconds={"p50": total.p50, "p95": total.p95, "mean": total.mean_duration},
        records_per_run=total.seen_per_finished_run, records_skipped=total.records["skipped"],
        rate_limit_wait_seconds=round(total.rate_limit_wait_seconds, 1),
    )


_NULLABLE_NUMBER = {"type": "number", "nullable": True}

OPENAPI_PATHS = {
    "/api/health": {"get": {
        "summary": "Database and Redis readiness, queues, workers, stale runs, leader, open alerts",
        "security": TOKEN, "tags": ["meta"],
        "responses": dict(
            responses(200, {"$ref": "#/components/schemas/Health"}, UNAUTHORIZED),
            **{"503": {"description": "the database or Redis does not answer",
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}}),
    }},
    "/api/stats": {"get": {
        "summary": "Run outcomes over the last N days: counts per status, success rate, durations, records",
        "description": "Figures of the runs created in the window of `series` (N days in whole periods, the "
                       "last containing now). Counts and sums are exact; finished runs are read from per-hour "
                       "and per-day roll-ups, so duration p50/p95 come from log-spaced histograms, within 4.4% "
                       "of the exact nearest-rank value for runs of 0.01 s to 39 h; the mean is exact.",
        "security": TOKEN, "tags": ["meta"],
        "parameters": [
            {"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_DAYS, "default": 7}},
            {"name": "connection", "in": "query", "description": "connection id or name",
             "schema": {"type": "string", "maxLength": 100}}],
        "responses": responses(200, {"type": "object", "required": ["since", "runs", "by_status", "success_rate"], "properties": {
            "since": {"type": "string", "format": "date-time", "description": "start of the window (of its first period)"},
            "until": {"type": "string", "format": "date-time", "description": "end of the window (of its last period)"},
            "connection": {"type": "string", "nullable": True},
            "runs": {"type": "integer"},
            "by_status": {"type": "object", "additionalProperties": {"type": "integer"}},
            "success_rate": {"type": "number", "nullable": True,
                             "description": "completed / (completed + failed); null when none finished"},
            "duration_seconds": {"type": "object", "properties": {
                "p50": _NULLABLE_NUMBER, "p95": _NULLABLE_NUMBER, "mean": _NULLABLE_NUMBER}},
            "records_per_run": dict(_NULLABLE_NUMBER, description="records seen per finished run"),
            "rate_limit_wait_seconds": {"type": "number", "description": "seconds the runs waited for rate-limit "
                                        "budget or a provider's Retry-After"},
            "records_skipped": {"type": "integer"},
            "bucket_seconds": {"type": "integer", "description": "length of each period of `series`: an hour for "
                               "days=1, 6 hours up to 7 days, a day up to 30, 3 days up to 90, else a week"},
            "series": {"type": "array", "items": {"$ref": "#/components/schemas/StatsPeriod"},
                       "description": "whole periods, oldest first, the last one containing now; "
                                      "runs counted by the period they were created in; finished runs "
                                      "read from per-hour and per-day roll-ups, so counts are exact and "
                                      "duration percentiles histogram-based (see StatsPeriod)"}}},
            BAD_REQUEST, UNAUTHORIZED, NOT_FOUND),
    }},
}

_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}

OPENAPI_SCHEMAS = {"StatsPeriod": {
    "type": "object",
    "required": ["start", "runs", "by_status", "success_rate", "duration_seconds", "records", "seen", "retries",
                 "rate_limit_wait_seconds"],
    "properties": {
        "start": {"type": "string", "format": "date-time"},
        "runs": {"type": "integer"},
        "by_status": _COUNTS,
        "success_rate": {"type": "number", "nullable": True,
                         "description": "completed / (completed + failed) in the period; null when none finished"},
        "duration_seconds": {"type": "object", "required": ["p50", "p95"], "properties": {
            "p50": _NULLABLE_NUMBER, "p95": _NULLABLE_NUMBER},
            "description": "nearest-rank percentiles of the durations of completed and failed runs, from "
                           "log-spaced histograms: within 4.4% of the exact value for runs of 0.01 s to 39 h"},
        "records": {"type": "object", "properties": {k: {"type": "integer"} for k in stats.RECORD_COUNTERS}},
        "seen": {"type": "integer"},
        "retries": {"type": "integer", "description": "attempts beyond the first"},
        "rate_limit_wait_seconds": {"type": "number", "description": "seconds the period's runs waited for "
                                    "rate-limit budget or a provider's Retry-After"}}},
    "Health": {"type": "object", "required": ["status", "checks"], "properties": {
    "status": {"type": "string", "enum": ["ok", "unavailable"]},
    "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    "queues": {"type": "object", "additionalProperties": {"type": "integer"}},
    "workers": {"type": "integer"},
    "running": {"type": "integer"},
    "queued": {"type": "integer"},
    "oldest_queued_at": {"type": "string", "nullable": True},
    "stale_runs": {"type": "array", "items": {"type": "integer"}},
    "leader": {"type": "string", "nullable": True},
    "open_alerts": {"type": "array", "items": {"type": "object"}}}}}
