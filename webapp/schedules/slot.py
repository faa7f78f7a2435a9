"""One due slot and what became of it, and the slot-by-slot way to fire it.

A slot is taken by moving its connection's `next_run_at` forward with a conditional UPDATE
(WHERE next_run_at = the value read) in the transaction that inserts its run, so a slot
yields at most one run whatever number of supervisors race for it. batches.py fires most
slots many at a time; the slots it cannot settle in bulk (a connection with an active
sync or a waiting follow-up, a paused one, an insert that met the one-active-sync index)
come here, where runs.trigger applies the overlap policy.
"""
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select, update

from .. import runs
from ..extensions import db
from ..models import Connection
from .parser import Schedule, missed_slots

SCHEDULE_MODES = ("full", "incremental")


class DueSlot(NamedTuple):
    connection_id: int
    connection: str  # its name
    text: str  # the schedule as stored: taking the slot is conditional on it
    schedule: Schedule
    due_at: datetime


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


def outcome_of(slot, now):
    """The outcome before anything is done: "taken" (by someone else) until we take it."""
    return SlotOutcome(slot.connection_id, slot.connection, slot.due_at, "taken",
                       next_run_at=slot.schedule.next_after(now), missed=missed_slots(slot.schedule, slot.due_at, now))


def scheduled_mode(settings):
    """(the mode of this connection's scheduled runs, None) or (None, why none may run)."""
    mode = (settings or {}).get("schedule_mode") or "full"
    if mode not in SCHEDULE_MODES:
        return None, f"settings.schedule_mode {mode!r} is not one of {', '.join(SCHEDULE_MODES)}"
    return mode, None


def requested_by_of(requested_by, due_at):
    return f"{requested_by} (slot {due_at.isoformat(timespec='minutes')}Z)"


def take_slot(connection_id, text, due_at, next_at):
    """The conditional UPDATE that decides which supervisor owns a slot (not committed)."""
    return db.session.execute(
        update(Connection)
        .where(Connection.id == connection_id, Connection.next_run_at == due_at,
               Connection.schedule == text, Connection.enabled.is_(True))
        .values(next_run_at=next_at).execution_options(synchronize_session=False)
    ).rowcount == 1


def fire_slot(slot, now, requested_by):
    """Fire one slot in transactions of its own: take it, then runs.trigger."""
    outcome = outcome_of(slot, now)
    connection_id, due_at, next_at = slot.connection_id, slot.due_at, outcome.next_run_at
    if not take_slot(connection_id, slot.text, due_at, next_at):
        db.session.rollback()
        return outcome  # another supervisor took it, or the schedule changed under us
    connection = db.session.get(Connection, connection_id)
    mode, refused = scheduled_mode(connection.settings)
    try:
        if refused:
            raise runs.TriggerRefused(refused)
        # trigger() commits its insert in the transaction that holds our slot UPDATE, so the
        # slot and its run are one atomic change. Meeting an active sync, it applies the
        # overlap policy (skip: logged on that run; buffer_one: one waiting follow-up).
        result = runs.trigger(connection, mode=mode, trigger="schedule",
                              requested_by=requested_by_of(requested_by, due_at))
    except runs.TriggerRefused as exc:
        db.session.commit()  # the slot is used up; the refusal is logged, not retried every tick
        outcome.action, outcome.reason = "refused", str(exc)
        return outcome
    # When trigger() hit the unique index it rolled our UPDATE back with its insert attempt
    # (and, rarely, inserted on a second try): then take the slot again.
    still_due = db.session.scalar(select(Connection.next_run_at).where(Connection.id == connection_id)) == due_at
    if still_due and take_slot(connection_id, slot.text, due_at, next_at):
        db.session.commit()
    else:
        db.session.rollback()
    outcome.run_id = result.run.id
    outcome.action = {"queued": "enqueued", "follow_up": "follow_up"}.get(result.outcome, "skipped_active")
    return outcome
