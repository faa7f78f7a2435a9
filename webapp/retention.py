"""Retention: delete old history so the database does not grow forever (S2's
cleanup_old_sync_data).

What goes, each after its own number of days (RETENTION_*_DAYS):
    runs               finished (completed/failed/cancelled) before the window, with their
                       events; never an active run, and never a connection's latest run
                       (the dashboard's "last run" must survive a quiet month)
    run events         older than the window, of finished runs only
    webhook deliveries received before the window
    outbox events      delivered (`done`) before the window; `dead` ones wait for a person
    supervisors        rows of supervisor processes silent for longer than the window
    hourly roll-ups    of finished runs (webapp/rollups.py), older than rollups.HOURLY_KEEP_DAYS
                       (31): only windows of a week or less read hours. The daily roll-ups
                       stay: the statistics of runs deleted here live on in them.
Records (the synced data itself) are never touched here.

Deletes go in small batches, each its own transaction, so a big cleanup never holds a
long lock against workers writing pages.
"""
import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, func, select

from . import rollups
from .extensions import db
from .models import TERMINAL_STATUSES, OutboxEvent, Run, RunEvent, SupervisorState, WebhookDelivery, utcnow

log = logging.getLogger(__name__)

BATCH_SIZE = 500


def cutoffs(now=None, **days):
    """{kind: cutoff datetime}; `days` overrides the configured RETENTION_<KIND>_DAYS."""
    now = now or utcnow()
    config = current_app.config
    result = {}
    for kind in ("runs", "run_events", "webhook_deliveries", "outbox_events", "supervisors"):
        value = days.get(kind)
        if value is None:
            value = config[f"RETENTION_{kind.upper()}_DAYS"]
        if value is None or float(value) <= 0:
            raise ValueError(f"retention for {kind} must be a positive number of days, not {value!r}")
        result[kind] = now - timedelta(days=float(value))
    return result


def cleanup(now=None, batch_size=BATCH_SIZE, **days):
    """Delete what is older than the retention windows. Returns {kind: rows deleted}."""
    limits = cutoffs(now, **days)
    counts = {
        "runs": 0,
        "run_events": 0,
        "webhook_deliveries": _delete_in_batches(WebhookDelivery, WebhookDelivery.received_at < limits["webhook_deliveries"], batch_size),
        "outbox_events": _delete_in_batches(
            OutboxEvent, (OutboxEvent.status == "done")
            & (func.coalesce(OutboxEvent.delivered_at, OutboxEvent.updated_at) < limits["outbox_events"]), batch_size),
        "supervisors": _delete_supervisors(limits["supervisors"]),
        "hourly_rollups": rollups.prune_hourly(now or utcnow()),
    }
    runs, run_events = _delete_runs(limits["runs"], batch_size)
    counts["runs"] = runs
    counts["run_events"] = run_events + _delete_events(limits["run_events"], batch_size)
    if any(counts.values()):
        log.info("retention: deleted %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


def _delete_in_batches(model, condition, batch_size):
    total = 0
    while True:
        ids = db.session.execute(select(model.id).where(condition).order_by(model.id).limit(batch_size)).scalars().all()
        if not ids:
            db.session.rollback()
            return total
        result = db.session.execute(delete(model).where(model.id.in_(ids), condition)
                                    .execution_options(synchronize_session=False))
        db.session.commit()
        total += result.rowcount


def _delete_runs(cutoff, batch_size):
    latest_per_connection = select(func.max(Run.id)).group_by(Run.connection_id)
    # The status condition is repeated in the DELETE itself: a run is only ever deleted
    # while it is finished, whatever happened between the SELECT and the DELETE.
    old = (Run.status.in_(TERMINAL_STATUSES) & (func.coalesce(Run.finished_at, Run.created_at) < cutoff)
           & Run.id.not_in(latest_per_connection))
    runs = events = 0
    while True:
        ids = db.session.execute(select(Run.id).where(old).order_by(Run.id).limit(batch_size)).scalars().all()
        if not ids:
            db.session.rollback()
            return runs, events
        # Events first and explicitly: their count is reported, and SQLite only cascades
        # when its foreign-key pragma is on.
        doomed = select(Run.id).where(Run.id.in_(ids), old)
        events += db.session.execute(delete(RunEvent).where(RunEvent.run_id.in_(doomed))
                                     .execution_options(synchronize_session=False)).rowcount
        runs += db.session.execute(delete(Run).where(Run.id.in_(ids), old)
                                   .execution_options(synchronize_session=False)).rowcount
        db.session.commit()


def _delete_events(cutoff, batch_size):
    finished_runs = select(Run.id).where(Run.status.in_(TERMINAL_STATUSES))
    return _delete_in_batches(RunEvent, (RunEvent.created_at < cutoff) & RunEvent.run_id.in_(finished_runs), batch_size)


def _delete_supervisors(cutoff):
    result = db.session.execute(
        delete(SupervisorState)
        .where(func.coalesce(SupervisorState.last_tick_at, SupervisorState.started_at) < cutoff)
        .execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount
