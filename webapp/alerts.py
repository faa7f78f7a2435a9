"""Alert conditions, computed from the rows, never hard-coded (docs/SUPERVISOR.md, "Alerts").

    consecutive_failures  a connection's last N finished syncs all failed
    no_recent_success     a scheduled connection has not completed a sync within N hours
    stale_runs            runs lost their worker (heartbeat stopped) recently, or still are
    dead_outbox           outbound events gave up and wait for a person
    supervisor_silent     no supervisor has ticked as leader within the window

`current_conditions()` is what the health page and the API show. `sync_alerts()` turns
conditions into Alert rows: a new condition opens one alert (the partial unique index
keeps it to one open alert per kind and subject, across processes) and publishes one
notification through the outbox to every `notify` connection in the same transaction
(connection_issues.notify: retried, in order, dead-lettered like any outbox event); when
the condition is gone the alert is cleared and a "resolved" notification is published.
"""
import logging
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, or_, select, text, update

from .connection_issues import notify_many
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


def sync_alerts(now=None):
    """Open alerts for new conditions and clear those whose condition is gone. Each change
    is made by exactly one process (unique index / conditional update), in the transaction
    that publishes its notification, so a condition is announced once until it clears.

    In bulk, a few statements per page of rows rather than several per alert: a first start
    on thousands of connections that never synced opens thousands at once, and one by one
    (a commit and an outbox row each) that took the supervisor minutes (docs/PERFORMANCE.md,
    "Supervisor scale"). New alerts go in with multi-row INSERT ... ON CONFLICT DO NOTHING
    RETURNING on the open-alert unique index: a process announces only the rows it
    inserted, so two supervisors racing open one alert and publish one notification."""
    now = now or utcnow()
    conditions = {c.key: c for c in current_conditions(now)}
    open_by_key = {(kind, subject): alert_id for alert_id, kind, subject in db.session.execute(
        select(Alert.id, Alert.kind, Alert.subject).where(Alert.cleared_at.is_(None)))}
    db.session.rollback()
    new = [conditions[key] for key in sorted(conditions) if key not in open_by_key]  # one order: no deadlock
    gone = sorted(alert_id for key, alert_id in open_by_key.items() if key not in conditions)
    fired_ids = _open_alerts(new, now) if new else []
    cleared_ids = _clear_alerts(gone, now) if gone else []
    fired, cleared = _alerts_by_id(fired_ids), _alerts_by_id(cleared_ids)
    db.session.rollback()
    for alert in fired[:_LOGGED]:
        log.warning("alert fired: kind=%s subject=%s %s", alert.kind, alert.subject, alert.message)
    for alert in cleared[:_LOGGED]:
        log.info("alert cleared: kind=%s subject=%s", alert.kind, alert.subject)
    if len(fired) > _LOGGED or len(cleared) > _LOGGED:
        log.warning("alerts: %d fired, %d cleared in this step (the first %d of each logged above)",
                    len(fired), len(cleared), _LOGGED)
    return SyncResult(fired, cleared)


OPEN_ALERT = "cleared_at IS NULL"  # the WHERE of models.Alert's partial unique index
_PAGE = 500  # rows per statement: SQLite caps one statement's parameters
_LOGGED = 20  # alert lines logged per step; the rest are counted (the alerts page lists them all)


def _open_alerts(conditions, now):
    """Insert the alerts nobody opened yet and announce those this process inserted, in
    one transaction. Returns their ids."""
    table = Alert.__table__
    rows = [{"kind": c.kind, "subject": c.subject, "message": c.message, "fired_at": now} for c in conditions]
    # A parameter list: SQLAlchemy's "insertmanyvalues" sends multi-row INSERTs of one
    # statement compiled once (.values(rows) compiled a statement of every row afresh).
    opened = db.session.execute(
        _insert(table).on_conflict_do_nothing(index_elements=["kind", "subject"], index_where=text(OPEN_ALERT))
        .returning(table.c.id, table.c.kind, table.c.subject, table.c.message), rows).all()
    _announce([_Announced(*row) for row in opened], resolved=False)
    db.session.commit()
    return [row[0] for row in opened]


def _clear_alerts(alert_ids, now):
    """Clear the open alerts among `alert_ids` (a conditional UPDATE: one process clears
    each) and announce those, in one transaction. Returns their ids."""
    cleared = []
    for start in range(0, len(alert_ids), _PAGE):
        cleared += db.session.execute(
            update(Alert).where(Alert.id.in_(alert_ids[start:start + _PAGE]), Alert.cleared_at.is_(None))
            .values(cleared_at=now).returning(Alert.id, Alert.kind, Alert.subject, Alert.message)
            .execution_options(synchronize_session=False)).all()
    _announce([_Announced(*row) for row in cleared], resolved=True)
    db.session.commit()
    return [row[0] for row in cleared]


def _alerts_by_id(ids):
    found = []
    for start in range(0, len(ids), _PAGE):
        found += db.session.execute(select(Alert).where(Alert.id.in_(ids[start:start + _PAGE]))).scalars().all()
    return sorted(found, key=lambda a: (a.fired_at, a.id))


def _insert(table):
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(table)


@dataclass(frozen=True)
class _Announced:
    id: int
    kind: str
    subject: str
    message: str


def notification_text(alert, resolved):
    subject = f" ({alert.subject})" if alert.subject else ""
    if resolved:
        return f"[synchub] resolved: {alert.kind}{subject}: {alert.message}"
    return f"[synchub] ALERT {alert.kind}{subject}: {alert.message}"


def _announce(alerts_, resolved):
    event = "alert.resolved" if resolved else "alert.fired"
    notify_many([
        (f"alerts:{a.kind}:{a.subject}"[:255], event,
         {"text": notification_text(a, resolved),
          "alert": {"id": a.id, "kind": a.kind, "subject": a.subject, "message": a.message}},
         f"alert-{a.id}-{'resolved' if resolved else 'fired'}")
        for a in alerts_])


# -- the conditions ----------------------------------------------------------------------


def _consecutive_failures(threshold):
    """One query for every connection: each one's last `threshold` finished syncs, numbered
    by a window function (SQLite >= 3.25 and PostgreSQL), rather than a query per connection
    on every alerts step."""
    if threshold < 1:
        return []
    # Record runs (single webhook records) don't count: a good one says nothing about the syncs.
    ranked = (
        select(Run.connection_id, Run.id, Run.status, Run.error_message,
               func.row_number().over(partition_by=Run.connection_id,
                                      order_by=(Run.finished_at.desc(), Run.id.desc())).label("n"))
        .where(Run.mode != "record", Run.status.in_((COMPLETED, FAILED)))
        .subquery()
    )
    rows = db.session.execute(
        select(Connection.id, Connection.name, ranked.c.id, ranked.c.status, ranked.c.error_message)
        .join(ranked, ranked.c.connection_id == Connection.id)
        .where(ranked.c.n <= threshold)
        .order_by(Connection.id, ranked.c.n)
    ).all()
    last = {}
    for connection_id, name, run_id, status, error in rows:
        last.setdefault((connection_id, name), []).append((run_id, status, error))
    conditions = []
    for (_, name), runs_ in last.items():
        if len(runs_) == threshold and all(status == FAILED for _, status, _ in runs_):
            latest_id, _, error = runs_[0]
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
