"""Connection schedules: parse them, compute slots, and fire the slots that are due.

A schedule is one of:
    manual            never triggered automatically (SPEC §5, S2)
    every:<minutes>   every N minutes, on multiples of N minutes since the Unix epoch
                      (every:5 fires at :00, :05, :10 ...; every:60 on the hour)
    hourly:<minute>   once an hour at that minute (S5: hourly:0)
    cron:<expression> a standard 5-field cron expression or @hourly/@daily/@weekly/@monthly

All times are naive UTC, like every timestamp in the database.

Each connection stores its next slot in `next_run_at`. `fire_due` takes a slot by moving
`next_run_at` forward with a conditional UPDATE (WHERE next_run_at = the value read) in
the same transaction that inserts the run, so a slot yields at most one run whatever
number of supervisors race for it, and a crash mid-slot leaves either both or neither.
Slots missed while no supervisor ran are coalesced into one run.
"""
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import CroniterBadDateError, CroniterError, croniter
from sqlalchemy import select, update

from . import runs
from .connectors.errors import ConfigError
from .extensions import db
from .models import Connection, utcnow

log = logging.getLogger(__name__)

MANUAL, EVERY, HOURLY, CRON = "manual", "every", "hourly", "cron"
FORMS = "manual, every:<minutes> (e.g. every:15), hourly:<minute> (e.g. hourly:0) or cron:<expression> (e.g. cron:30 2 * * *)"
CRON_ALIASES = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
MAX_EVERY_MINUTES = 31 * 24 * 60
SCHEDULE_MODES = ("full", "incremental")
# Missed slots are counted for the log line only; no need to count past this.
_MISSED_COUNT_CAP = 1000


class ScheduleError(ConfigError, ValueError):
    """A schedule string that cannot be used; the message says what to write instead."""


@dataclass(frozen=True)
class Schedule:
    kind: str
    text: str  # normalized form, as it should be stored
    minutes: int | None = None  # every
    minute: int | None = None  # hourly
    expression: str | None = None  # cron

    @property
    def manual(self):
        return self.kind == MANUAL

    def next_after(self, moment):
        """The first slot strictly after `moment` (naive UTC), or None for manual."""
        moment = moment.replace(second=0, microsecond=0)  # slots are whole minutes
        if self.kind == MANUAL:
            return None
        if self.kind == EVERY:
            epoch_minutes = int((moment - _EPOCH).total_seconds() // 60)
            return _EPOCH + timedelta(minutes=(epoch_minutes // self.minutes + 1) * self.minutes)
        if self.kind == HOURLY:
            candidate = moment.replace(minute=self.minute)
            return candidate if candidate > moment else candidate + timedelta(hours=1)
        return croniter(self.expression, moment).get_next(datetime)

    def describe(self):
        if self.kind == MANUAL:
            return "manual only"
        if self.kind == EVERY:
            return f"every {self.minutes} minute{'s' if self.minutes != 1 else ''}"
        if self.kind == HOURLY:
            return f"hourly at minute {self.minute}"
        return f"cron {self.expression} (UTC)"


_EPOCH = datetime(1970, 1, 1)


def parse(text):
    """Parse and validate a schedule string. Raises ScheduleError with an actionable message."""
    if text is None or not str(text).strip():
        raise ScheduleError(f"the schedule is empty; use {FORMS}")
    raw = str(text).strip()
    if raw.lower() == MANUAL:
        return Schedule(MANUAL, MANUAL)
    kind, sep, value = raw.partition(":")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or kind not in (EVERY, HOURLY, CRON):
        raise ScheduleError(f"unknown schedule {raw!r}; use {FORMS}")
    if kind == EVERY:
        minutes = _integer(value, raw, "every:<minutes> needs a whole number of minutes, e.g. every:15")
        if not 1 <= minutes <= MAX_EVERY_MINUTES:
            raise ScheduleError(f"{raw!r}: minutes must be between 1 and {MAX_EVERY_MINUTES} (31 days)")
        return Schedule(EVERY, f"every:{minutes}", minutes=minutes)
    if kind == HOURLY:
        minute = _integer(value, raw, "hourly:<minute> needs the minute of the hour, e.g. hourly:0")
        if not 0 <= minute <= 59:
            raise ScheduleError(f"{raw!r}: the minute must be between 0 and 59")
        return Schedule(HOURLY, f"hourly:{minute}", minute=minute)
    return _cron(value, raw)


def _integer(value, raw, hint):
    try:
        return int(value)
    except ValueError:
        raise ScheduleError(f"{raw!r}: {hint}") from None


def _cron(expression, raw):
    expression = " ".join(expression.split())
    if not expression:
        raise ScheduleError(f"{raw!r}: cron: needs an expression, e.g. cron:0 * * * * (hourly) or cron:30 2 * * 1-5")
    if expression.startswith("@"):
        if expression.lower() not in CRON_ALIASES:
            raise ScheduleError(f"{raw!r}: unknown alias; use one of {', '.join(CRON_ALIASES)}")
        expression = expression.lower()
    elif len(expression.split(" ")) != 5:
        # croniter also accepts a seconds (and year) field; one-minute resolution is the contract.
        raise ScheduleError(f"{raw!r}: a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
                            f"e.g. cron:30 2 * * 1-5; this one has {len(expression.split(' '))}")
    try:
        croniter(expression, _EPOCH).get_next(datetime)
    except CroniterBadDateError:
        raise ScheduleError(f"{raw!r}: this cron expression never matches a real date") from None
    except (CroniterError, ValueError) as exc:
        raise ScheduleError(f"{raw!r}: not a valid cron expression ({exc})") from None
    return Schedule(CRON, f"cron:{expression}", expression=expression)


def normalize(text):
    """The canonical form of a valid schedule string (what forms and the CLI should store)."""
    return parse(text).text


def next_run(text, after=None):
    """The first slot of schedule `text` strictly after `after` (default: now), or None."""
    return parse(text).next_after(after or utcnow())


def reschedule(connection, now=None):
    """Set `connection.next_run_at` for its current schedule (no commit). Whoever edits a
    schedule calls this, so a shortened interval takes effect at once."""
    schedule = parse(connection.schedule)
    connection.next_run_at = None if schedule.manual or not connection.enabled else schedule.next_after(now or utcnow())
    return connection.next_run_at


def missed_slots(schedule, due_at, now):
    """How many slots in [due_at, now] (at least 1 when due): the ones coalesced into one run."""
    count, slot = 1, schedule.next_after(due_at)
    while slot is not None and slot <= now and count < _MISSED_COUNT_CAP:
        count += 1
        slot = schedule.next_after(slot)
    return count


# -- the supervisor's side ---------------------------------------------------------------


@dataclass
class SlotOutcome:
    connection_id: int
    connection: str
    slot: datetime
    action: str  # enqueued | skipped_active | refused | taken (by another supervisor)
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
    connections that have none; clear it for manual, disabled or unusable ones. Returns the
    number of connections changed. Conditional on the value read, like everything else."""
    now = now or utcnow()
    rows = db.session.execute(
        select(Connection.id, Connection.name, Connection.schedule, Connection.enabled, Connection.next_run_at)
    ).all()
    db.session.rollback()
    changed = 0
    for connection_id, name, text, enabled, next_run_at in rows:
        schedule = _parsed_or_none(connection_id, name, text)
        schedulable = schedule is not None and not schedule.manual and enabled
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
    active = runs.active_run(connection_id)
    if not _take_slot(connection_id, text, due_at, next_at):
        db.session.rollback()
        return outcome  # another supervisor took it, or the schedule changed under us
    if active is not None:
        db.session.commit()
        outcome.action, outcome.run_id = "skipped_active", active.id
        return outcome
    connection = db.session.get(Connection, connection_id)
    mode = (connection.settings or {}).get("schedule_mode") or "full"
    try:
        if mode not in SCHEDULE_MODES:
            raise runs.TriggerRefused(f"settings.schedule_mode {mode!r} is not one of {', '.join(SCHEDULE_MODES)}")
        # trigger() commits its insert in the transaction that holds our slot UPDATE, so the
        # slot and its run are one atomic change.
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
    outcome.action = "enqueued" if result.created else "skipped_active"
    return outcome
