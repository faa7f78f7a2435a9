"""Firing schedules: keep each connection's next slot, and turn the slots that are due into runs.

Each connection stores its next slot in `next_run_at`. `fire_due` takes a slot by moving
`next_run_at` forward with a conditional UPDATE (WHERE next_run_at = the value read) in
the same transaction that inserts the run, so a slot yields at most one run whatever
number of supervisors race for it, and a crash mid-slot leaves either both or neither.
Slots missed while no supervisor ran are coalesced into one run. The due slots are fired
in batches (batches.py: one transaction for a few hundred slots, the same conditional
UPDATE per slot), those that meet an active sync one by one (slot.py). Callers: the
supervisor (scheduler/supervisor.py) and the cron endpoint (webapp/api/cron.py); the
schedule language itself is parser.py.
"""
import logging

from sqlalchemy import select, update

from ..extensions import db
from ..models import Connection, utcnow
from ..trigger_policy import allowed_triggers
from .batches import fire_in_batches
from .parser import MANUAL, ScheduleError, parse
from .slot import SCHEDULE_MODES, DueSlot, SlotOutcome  # noqa: F401  (SlotOutcome, SCHEDULE_MODES: this module's API)

log = logging.getLogger(__name__)


def reschedule(connection, now=None):
    """Set `connection.next_run_at` for its current schedule (no commit). Whoever edits a
    schedule (or the trigger policy, or the enabled flag) calls this, so a shortened
    interval takes effect at once."""
    schedule = parse(connection.schedule)
    schedulable = not schedule.manual and connection.enabled and "schedule" in connection.allowed_triggers
    connection.next_run_at = schedule.next_after(now or utcnow()) if schedulable else None
    return connection.next_run_at




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
    """Enqueue one scheduled run per due slot, in batches (batches.py). Returns a
    SlotOutcome per due connection, in the order they came due."""
    now = now or utcnow()
    slots = []
    for connection_id, name, text, due_at in due_connections(now):
        schedule = _parsed_or_none(connection_id, name, text)
        if schedule is None or schedule.manual:
            continue  # plan_next_runs clears these; a manual connection never gets a run from here
        slots.append(DueSlot(connection_id, name, text, schedule, due_at))
    return fire_in_batches(slots, now, requested_by)
