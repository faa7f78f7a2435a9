"""The schedule language: parse a connection's schedule string and compute its slots.

A schedule is one of:
    manual            never triggered automatically: only a person (admin, CLI, API) starts
                      its runs; schedule and event triggers are refused (docs/SUPERVISOR.md)
    every:<minutes>   every N minutes, on multiples of N minutes since the Unix epoch
                      (every:5 fires at :00, :05, :10 ...; every:60 on the hour)
    hourly:<minute>   once an hour at that minute (hourly:0 on the hour)
    cron:<expression> a standard 5-field cron expression or @hourly/@daily/@weekly/@monthly

All times are naive UTC, like every timestamp in the database. This module touches no
database and no Flask app: firing.py is the side that does.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import CroniterBadDateError, CroniterError, croniter

from ..connectors.errors import ConfigError

MANUAL, EVERY, HOURLY, CRON = "manual", "every", "hourly", "cron"
FORMS = "manual, every:<minutes> (e.g. every:15), hourly:<minute> (e.g. hourly:0) or cron:<expression> (e.g. cron:30 2 * * *)"
CRON_ALIASES = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
MAX_EVERY_MINUTES = 31 * 24 * 60
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


def missed_slots(schedule, due_at, now):
    """How many slots in [due_at, now] (at least 1 when due): the ones coalesced into one run."""
    count, slot = 1, schedule.next_after(due_at)
    while slot is not None and slot <= now and count < _MISSED_COUNT_CAP:
        count += 1
        slot = schedule.next_after(slot)
    return count
