"""Alert conditions, computed from the rows, never hard-coded (docs/SUPERVISOR.md, "Alerts").

    consecutive_failures  a connection's last N finished syncs all failed
    no_recent_success     a scheduled connection has not completed a sync within N hours
    stale_runs            runs lost their worker (heartbeat stopped) recently, or still are
    dead_outbox           outbound events gave up and wait for a person
    supervisor_silent     no supervisor has ticked as leader within the window

`current_conditions()` is what the health page and the API show. `sync_alerts()` turns
conditions into Alert rows: a new condition opens one alert (the partial unique index
keeps it to one open alert per kind and subject, across processes) and sends one
notification to ALERT_WEBHOOK_URL (Slack-compatible JSON); when the condition is gone the
alert is cleared and a "resolved" notification is sent.
"""
import logging
from dataclasses import dataclass
from datetime import timedelta

import requests
from flask import current_app
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from . import net_guard
from .extensions import db
from .models import (
    ACTIVE_STATUSES,
    COMPLETED,
    FAILED,
    RUNNING,
    Alert,
    Connection,
    OutboxEvent,
    Run,
    SupervisorState,
    utcnow,
)

log = logging.getLogger(__name__)

CONSECUTIVE_FAILURES = "consecutive_failures"
NO_RECENT_SUCCESS = "no_recent_success"
STALE_RUNS = "stale_runs"
DEAD_OUTBOX = "dead_outbox"
SUPERVISOR_SILENT = "supervisor_silent"
WORKER_LOST = "worker_lost"  # the error_class runs.sweep_stale gives a run whose worker vanished


@dataclass(frozen=True)
class Condition:
    kind: str
    subject: str  # connection name, or "" for system-wide conditions
    message: str

    @property
    def key(self):
        return self.kind, self.subject


@dataclass
class SyncResult:
    fired: list
    cleared: list


def current_conditions(now=None):
    """Every alert condition that holds right now, as Condition objects."""
    now = now or utcnow()
    config = current_app.config
    conditions = []
    conditions += _consecutive_failures(config["ALERT_CONSECUTIVE_FAILURES"])
    conditions += _no_recent_success(now, timedelta(hours=config["ALERT_NO_SUCCESS_HOURS"]))
    conditions += _stale_runs(now, timedelta(seconds=config["STALE_AFTER_SECONDS"]),
                              timedelta(seconds=config["ALERT_STALE_WINDOW_SECONDS"]))
    conditions += _dead_outbox()
    conditions += _supervisor_silent(now, timedelta(seconds=config["ALERT_SUPERVISOR_SILENT_SECONDS"]))
    db.session.rollback()
    return conditions


def open_alerts():
    return db.session.execute(
        select(Alert).where(Alert.cleared_at.is_(None)).order_by(Alert.fired_at, Alert.id)
    ).scalars().all()


def sync_alerts(now=None, notify=True):
    """Open alerts for new conditions and clear those whose condition is gone. Each change
    is made by exactly one process (unique index / conditional update); only that process
    notifies, so a condition is announced once until it clears."""
    now = now or utcnow()
    conditions = {c.key: c for c in current_conditions(now)}
    open_by_key = {(a.kind, a.subject): a for a in open_alerts()}
    db.session.rollback()
    fired, cleared = [], []
    for key, condition in conditions.items():
        if key in open_by_key:
            continue
        alert = Alert(kind=condition.kind, subject=condition.subject, message=condition.message, fired_at=now)
        db.session.add(alert)
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()  # another process opened it a moment ago
            continue
        fired.append(alert)
        log.warning("alert fired: kind=%s subject=%s %s", alert.kind, alert.subject, alert.message)
    for key, alert in open_by_key.items():
        if key in conditions:
            continue
        result = db.session.execute(
            update(Alert).where(Alert.id == alert.id, Alert.cleared_at.is_(None)).values(cleared_at=now)
            .execution_options(synchronize_session=False))
        db.session.commit()
        if result.rowcount == 1:
            db.session.refresh(alert)
            cleared.append(alert)
            log.info("alert cleared: kind=%s subject=%s", alert.kind, alert.subject)
    if notify:
        for alert in fired:
            send_notification(alert, resolved=False)
        for alert in cleared:
            send_notification(alert, resolved=True)
    return SyncResult(fired, cleared)


def notification_text(alert, resolved):
    subject = f" ({alert.subject})" if alert.subject else ""
    if resolved:
        return f"[synchub] resolved: {alert.kind}{subject}: {alert.message}"
    return f"[synchub] ALERT {alert.kind}{subject}: {alert.message}"


def send_notification(alert, resolved):
    """POST {"text": ...} to ALERT_WEBHOOK_URL, if set. Returns True when delivered. A
    webhook URL is a secret: it never appears in the log, not even inside an exception."""
    url = current_app.config.get("ALERT_WEBHOOK_URL")
    if not url:
        return False
    try:
        with net_guard.session() as session:
            response = session.post(url, json={"text": notification_text(alert, resolved)},
                                    timeout=current_app.config["ALERT_WEBHOOK_TIMEOUT_SECONDS"],
                                    hooks=net_guard.guard(url, what="SYNCHUB_ALERT_WEBHOOK_URL"))
    except requests.RequestException as exc:
        log.warning("alert notification not delivered: %s", type(exc).__name__)
        return False
    except net_guard.UnsafeURL as exc:
        log.warning("alert notification not delivered: %s", exc)
        return False
    if response.status_code >= 300:
        log.warning("alert notification not delivered: the webhook answered HTTP %s", response.status_code)
        return False
    return True


# -- the conditions ----------------------------------------------------------------------


def _consecutive_failures(threshold):
    if threshold < 1:
        return []
    conditions = []
    for connection_id, name in db.session.execute(select(Connection.id, Connection.name).order_by(Connection.id)):
        # Record runs (single webhook records) don't count: a good one says nothing about the syncs.
        last = db.session.execute(
            select(Run.id, Run.status, Run.error_message)
            .where(Run.connection_id == connection_id, Run.mode != "record", Run.status.in_((COMPLETED, FAILED)))
            .order_by(Run.finished_at.desc(), Run.id.desc()).limit(threshold)
        ).all()
        if len(last) == threshold and all(status == FAILED for _, status, _ in last):
            latest_id, _, error = last[0]
            conditions.append(Condition(CONSECUTIVE_FAILURES, name,
                                        f"the last {threshold} syncs of {name!r} failed "
                                        f"(latest: run {latest_id}: {error or 'no error message'})"))
    return conditions


def _no_recent_success(now, window):
    since = now - window
    hours = round(window.total_seconds() / 3600, 2)
    last_success = (
        select(Run.connection_id, func.max(Run.finished_at).label("at"))
        .where(Run.status == COMPLETED, Run.mode != "record").group_by(Run.connection_id).subquery()
    )
    rows = db.session.execute(
        select(Connection.name, last_success.c.at)
        .outerjoin(last_success, last_success.c.connection_id == Connection.id)
        .where(Connection.enabled.is_(True), Connection.schedule != "manual",
               Connection.created_at < since, or_(last_success.c.at.is_(None), last_success.c.at < since))
        .order_by(Connection.id)
    ).all()
    return [Condition(NO_RECENT_SUCCESS, name,
                      f"no successful sync of {name!r} in the last {hours:g} h "
                      f"(last success: {at.isoformat(timespec='seconds') + 'Z' if at else 'never'})")
            for name, at in rows]


def _stale_runs(now, stale_after, window):
    rows = db.session.execute(
        select(Run.id).where(or_(
            # still running with a dead heartbeat: nobody has swept it (is the supervisor up?)
            (Run.status == RUNNING) & (Run.heartbeat_at < now - stale_after),
            # swept recently: requeued and not finished yet, or failed within the window
            (Run.error_class == WORKER_LOST) & (Run.status.in_(ACTIVE_STATUSES) | (Run.finished_at >= now - window)),
        )).order_by(Run.id)
    ).scalars().all()
    if not rows:
        return []
    shown = ", ".join(str(i) for i in rows[:10]) + (" ..." if len(rows) > 10 else "")
    return [Condition(STALE_RUNS, "", f"{len(rows)} run(s) lost their worker (no heartbeat): {shown}")]


def _dead_outbox():
    dead = db.session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.status == "dead"))
    if not dead:
        return []
    return [Condition(DEAD_OUTBOX, "", f"{dead} outbox event(s) are dead and need a retry or a discard")]


def _supervisor_silent(now, window):
    last_any = db.session.scalar(select(func.max(SupervisorState.last_tick_at)))
    last_leading = db.session.scalar(
        select(func.max(SupervisorState.last_tick_at)).where(SupervisorState.is_leader.is_(True)))
    since = now - window
    if last_leading is not None and last_leading >= since:
        return []
    if last_any is None:
        message = "no supervisor has ever run: schedules and stale-run sweeps are not happening (start `python -m scheduler`)"
    elif last_any >= since:
        message = "supervisors are running but none leads: is Redis reachable from them?"
    else:
        message = (f"no supervisor has ticked since {last_any.isoformat(timespec='seconds')}Z: "
                   "schedules and stale-run sweeps are not happening")
    return [Condition(SUPERVISOR_SILENT, "", message)]


def supervisors(now=None):
    """The supervisor rows for the health page: name, host, pid, leader, last tick, alive."""
    now = now or utcnow()
    window = timedelta(seconds=current_app.config["ALERT_SUPERVISOR_SILENT_SECONDS"])
    rows = db.session.execute(select(SupervisorState).order_by(SupervisorState.last_tick_at.desc())).scalars().all()
    return [{
        "name": row.name, "hostname": row.hostname, "pid": row.pid,
        "is_leader": bool(row.is_leader) and row.last_tick_at is not None and row.last_tick_at >= now - window,
        "started_at": row.started_at, "last_tick_at": row.last_tick_at,
        "alive": row.last_tick_at is not None and row.last_tick_at >= now - window,
    } for row in rows]
