"""Health: /healthz (the process answers), /readyz (database and Redis answer) for load
balancers, and the report behind the admin health page.

Failures are reported by exception class only: a connection URL can hold a password.
"""
from datetime import timedelta

import redis
from flask import Blueprint, current_app, jsonify
from sqlalchemy import func, select, text

from .connection_issues import open_by_cause
from .extensions import db, redis_ext
from .error_words import describe
from .models import QUEUED, RUNNING, Alert, Run, SupervisorState, utcnow
from .queue import queue_lengths, workers

bp = Blueprint("health", __name__)


@bp.route("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    checks = readiness()
    ok = all(value == "ok" for value in checks.values())
    # Connection issues (webapp/connection_issues.py) say nothing about this process being
    # able to serve, so they are reported beside the checks, never failing them.
    issues = _open_issues() if checks.get("database") == "ok" else None
    return jsonify(status="ok" if ok else "unavailable", checks=checks, open_issues=issues), 200 if ok else 503


def _open_issues():
    try:
        return open_by_cause()
    finally:
        db.session.rollback()


def readiness():
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready"; the class says which
        checks["database"] = f"error: {describe(exc)}"
    finally:
        db.session.rollback()
    try:
        redis_ext.client.ping()
        checks["redis"] = "ok"
    except (redis.RedisError, OSError) as exc:
        checks["redis"] = f"error: {describe(exc)}"
    return checks


def _naive(value):
    return value.replace(tzinfo=None) if value is not None and value.tzinfo else value


def workers_report(client):
    """RQ workers with their heartbeats, newest registered first."""
    rows = []
    for worker in workers(client):
        rows.append({
            "name": worker.name,
            "hostname": worker.hostname,
            "pid": worker.pid,
            "state": worker.get_state(),
            "queues": worker.queue_names(),
            "current_job": worker.get_current_job_id(),
            "last_heartbeat": _naive(worker.last_heartbeat),
            "birth_date": _naive(worker.birth_date),
        })
    rows.sort(key=lambda row: row["name"])
    return rows


def health_report(now=None):
    """Everything the health page shows. Redis being down is itself reported, not raised."""
    now = now or utcnow()
    config = current_app.config
    report = {"now": now, "redis": "ok", "workers": [], "queues": {}}
    try:
        client = redis_ext.client
        client.ping()
        report["workers"] = workers_report(client)
        report["queues"] = queue_lengths(client)
    except (redis.RedisError, OSError) as exc:
        report["redis"] = f"error: {describe(exc)}"
    stale_before = now - timedelta(seconds=config["STALE_AFTER_SECONDS"])
    report["stale_runs"] = db.session.execute(
        select(Run).where(Run.status == RUNNING, Run.heartbeat_at < stale_before).order_by(Run.heartbeat_at)
    ).scalars().all()
    report["running"] = db.session.execute(select(func.count(Run.id)).where(Run.status == RUNNING)).scalar_one()
    queued = db.session.execute(select(func.count(Run.id), func.min(Run.created_at)).where(Run.status == QUEUED)).one()
    report["queued"] = queued[0]
    report["oldest_queued_at"] = queued[1]
    supervisors = db.session.execute(select(SupervisorState).order_by(SupervisorState.name)).scalars().all()
    # A supervisor that has not ticked for this long is reported silent (the alerting threshold).
    silent_seconds = config["ALERT_SUPERVISOR_SILENT_SECONDS"]
    silent_before = now - timedelta(seconds=silent_seconds)
    report["supervisors"] = [{"row": s, "silent": not s.last_tick_at or s.last_tick_at < silent_before}
                             for s in supervisors]
    report["leader"] = next((s.name for s in supervisors if s.is_leader and s.last_tick_at
                             and s.last_tick_at >= silent_before), None)
    report["alerts"] = db.session.execute(
        select(Alert).where(Alert.cleared_at.is_(None)).order_by(Alert.fired_at.desc())).scalars().all()
    report["stale_after_seconds"] = config["STALE_AFTER_SECONDS"]
    report["supervisor_silent_seconds"] = silent_seconds
    return report
