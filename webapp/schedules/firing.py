"""Firing schedules: keep each connection's next slot, and turn the slots that are due into runs.

Each connection stores its next slot in `next_run_at`. `fire_due` takes a slot by moving
`next_run_at` forward with a conditional UPDATE (WHERE next_run_at = the value read) in
the same transaction that inserts the run, so a slot yields at most one run whatever
number of supervisors race for it, and a crash mid-slot leaves either both or neither.
Slots missed while no supervisor ran are coalesced into one run. Callers: the supervisor
(scheduler/supervisor.py) and the cron endpoint (webapp/api/cron.py); the schedule
language itself is parser.py.
"""
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from .. import runs
from ..extensions import db
from ..models import Connection, utcnow
from ..trigger_policy import allowed_triggers
from .parser import MANUAL, ScheduleError, missed_slots, parse

log = logging.getLogger(__name__)

SCHEDULE_MODES = ("full", "incremental")


def reschedule(connection, now=None):
    """Set `connection.next_run_at` for its current schedule (no commit). Whoever edits a
    schedule (or the trigger policy, or the enabled flag) calls this, so a shortened
    interval takes effect at once."""
    schedule = parse(connection.schedule)
    schedulable = not schedule.manual and connection.enabled and "schedule" in connection.allowed_triggers
    connection.next_run_at = schedule.next_after(now or utcnow()) if schedulable else None
    return connection.next_run_at


@dataclass
class SlotOutcome:
    connection_id: int
    connection: str
    slot: datetime
    action: str  # enqueued | follow_up | skipped_active | refused | taken (by another supervisor)
    run_id: int | None = None
    next_run_at: datetime | None = None
    missed: int = 1
    reason: str | None = None


_warned_invalid = set()


def _parsed_or_none(connection_id, name, text):
    try:
        return parse(text)
    except ScheduleError as exc:
        if (connection_id, text) not in _warned_invalid:  # once per process, not once per tick
            _warned_invalid.add((connection_id, text))
            log.error("schedule: connection=%s has an unusable schedule, never triggered: %s", name, exc)
        return None


def plan_next_runs(now=None):
    """Keep next_run_at true to each connection's schedule: set it for scheduled, enabled
    connections that have none; clear it for manual, disabled or unusable ones, and for
    those whose trigger policy takes no schedule. Returns the number of connections
    changed. Conditional on the value read, like everything else (a policy changed
    meanwhile is caught at the slot: runs.check_trigger refuses it)."""
    now = now or utcnow()
    rows = db.session.execute(
        select(Connection.id, Connection.name, Connection.schedule, Connection.enabled, Connection.next_run_at,
               Connection.settings)
    ).all()
    db.session.rollback()
    changed = 0
    for connection_id, name, text, enabled, next_run_at, settings in rows:
        schedule = _parsed_or_none(connection_id, name, text)
        schedulable = (schedule is not None and not schedule.manual and enabled
                       and "schedule" in allowed_triggers(settings, manual_only=False))
        if schedulable and next_run_at is None:
            target = schedule.next_after(now)
        elif not schedulable and next_run_at is not None:
            target = None
        else:
            continue
        condition = Connection.next_run_at.is_(None) if next_run_at is None else Connection.next_run_at == next_run_at
        result = db.session.execute(
            update(Connection).where(Connection.id == connection_id, Connection.schedule == text,
                                     Connection.enabled == enabled, condition)
            .values(next_run_at=target).execution_options(synchronize_session=False))
        db.session.commit()
        if result.rowcount == 1:
            changed += 1
            log.info("schedule: connection=%s next_run_at=%s (%s)", name,
                     target.isoformat() if target else None,
                     schedule.describe() if schedule else "unusable schedule")
    return changed


def due_connections(now):
    """(id, name, schedule, next_run_at) of enabled, non-manual connections whose slot has come."""
    rows = db.session.execute(
        select(Connection.id, Connection.name, Connection.schedule, Connection.next_run_at)
        .where(Connection.enabled.is_(True), Connection.next_run_at.is_not(None),
               Connection.next_run_at <= now, Connection.schedule != MANUAL)
        .order_by(Connection.next_run_at, Connection.id)
    ).all()
    db.session.rollback()  # end the read: each slot below is taken in its own short transaction
    return rows


def fire_due(now=None, requested_by="supervisor"):
    """Enqueue one scheduled run per due slot. Returns a SlotOutcome per due connection."""
    now = now or utcnow()
    outcomes = []
    for connection_id, name, text, due_at in due_connections(now):
        schedule = _parsed_or_none(connection_id, name, text)
        if schedule is None or schedule.manual:
            continue  # plan_next_runs clears these; a manual connection never gets a run from here
        outcomes.append(_fire_slot(connection_id, name, text, schedule, due_at, now, requested_by))
    return outcomes


def _take_slot(connection_id, text, due_at, next_at):
    """The conditional UPDATE that decides which supervisor owns a slot (not committed)."""
    return db.session.execute(
        update(Connection)
        .where(Connection.id == connection_id, Connection.next_run_at == due_at,
               Connection.schedule == text, Connection.enabled.is_(True))
        .values(next_run_at=next_at).execution_options(synchronize_session=False)
    ).rowcount == 1


def _fire_slot(connection_id, name, text, schedule, due_at, now, requested_by):
    next_at = schedule.next_after(now)
    outcome = SlotOutcome(connection_id, name, due_at, "taken", next_run_at=next_at,
                          missed=missed_slots(schedule, due_at, now))
    if not _take_slot(connection_id, text, due_at, next_at):
        db.session.rollback()
        return outcome  # another supervisor took it, or the schedule changed under us
    connection = db.session.get(Connection, connection_id)
    mode = (connection.settings or {}).get("schedule_mode") or "full"
    try:
        if mode not in SCHEDULE_MODES:
            raise runs.TriggerRefused(f"settings.schedule_mode {mode!r} is not one of {', '.join(SCHEDULE_MODES)}")
        # trigger() commits its insert in the transaction that holds our slot UPDATE, so the
        # slot and its run are one atomic change. Meeting an active sync, it applies the
        # overlap policy (skip: logged on that run; buffer_one: one waiting follow-up).
        result = runs.trigger(connection, mode=mode, trigger="schedule",
                              requested_by=f"{requested_by} (slot {due_at.isoformat(timespec='minutes')}Z)")
    except runs.TriggerRefused as exc:
        db.session.commit()  # the slot is used up; the refusal is logged, not retried every tick
        outcome.action, outcome.reason = "refused", str(exc)
        return outcome
    # When trigger() hit the unique index it rolled our UPDATE back with its insert attempt
    # (and, rarely, inserted on a second try): then take the slot again.
    still_due = db.session.scalar(select(Connection.next_run_at).where(Connection.id == connection_id)) == due_at
    if still_due and _take_slot(connection_id, text, due_at, next_at):
        db.session.commit()
    else:
        db.session.rollback()
    outcome.run_id = result.run.id
    outcome.action = {"queued": "enqueued", "follow_up": "follow_up"}.get(result.outcome, "skipped_active")
    return outcome
