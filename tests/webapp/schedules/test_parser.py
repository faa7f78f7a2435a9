"""The schedule language: parsing with actionable errors, and slot arithmetic."""
import ast
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from webapp.schedules import parser

T0 = datetime(2030, 1, 1, 0, 0)


def minutes(n):
    return T0 + timedelta(minutes=n)


@pytest.mark.parametrize("text, normalized, kind", [
    ("manual", "manual", "manual"),
    (" Manual ", "manual", "manual"),
    ("every:5", "every:5", "every"),
    ("EVERY: 15", "every:15", "every"),
    ("hourly:0", "hourly:0", "hourly"),
    ("hourly:59", "hourly:59", "hourly"),
    ("cron:*/15  * * * *", "cron:*/15 * * * *", "cron"),
    ("cron:30 2 * * 1-5", "cron:30 2 * * 1-5", "cron"),
    ("cron:@Daily", "cron:@daily", "cron"),
])
def test_parse_accepts_each_form_and_normalizes_it(text, normalized, kind):
    schedule = parser.parse(text)
    assert (schedule.text, schedule.kind) == (normalized, kind)


@pytest.mark.parametrize("text, hint", [
    ("", "empty"),
    ("weekly:1", "use manual, every:<minutes>"),
    ("every 5 minutes", "unknown schedule"),
    ("every:0", "between 1 and"),
    ("every:five", "whole number of minutes"),
    ("hourly:60", "between 0 and 59"),
    ("hourly:", "minute of the hour"),
    ("cron:", "needs an expression"),
    ("cron:* * *", "has 5 fields"),
    ("cron:*/5 * * * * *", "has 5 fields"),
    ("cron:61 * * * *", "not a valid cron expression"),
    ("cron:0 0 30 2 *", "never matches a real date"),
    ("cron:@sometimes", "unknown alias"),
])
def test_parse_rejects_bad_schedules_with_an_actionable_message(text, hint):
    with pytest.raises(parser.ScheduleError, match=hint) as info:
        parser.parse(text)
    assert isinstance(info.value, ValueError)  # forms can treat it as a plain validation error


def test_every_n_minutes_falls_on_multiples_of_n():
    five = parser.parse("every:5")
    assert five.next_after(datetime(2030, 1, 1, 10, 3, 59)) == datetime(2030, 1, 1, 10, 5)
    assert five.next_after(datetime(2030, 1, 1, 10, 5)) == datetime(2030, 1, 1, 10, 10)  # strictly after
    assert parser.parse("every:60").next_after(datetime(2030, 1, 1, 10, 0, 1)) == datetime(2030, 1, 1, 11, 0)


def test_hourly_fires_at_its_minute_of_the_next_hour_once_past_it():
    hourly = parser.parse("hourly:20")
    assert hourly.next_after(datetime(2030, 1, 1, 10, 19, 59)) == datetime(2030, 1, 1, 10, 20)
    assert hourly.next_after(datetime(2030, 1, 1, 10, 20)) == datetime(2030, 1, 1, 11, 20)
    assert hourly.next_after(datetime(2030, 12, 31, 23, 30)) == datetime(2031, 1, 1, 0, 20)


def test_cron_next_slot_comes_from_the_expression():
    weekdays = parser.parse("cron:30 2 * * 1-5")
    assert weekdays.next_after(datetime(2030, 1, 4, 3, 0)) == datetime(2030, 1, 7, 2, 30)  # Fri -> Mon
    assert parser.parse("manual").next_after(T0) is None


def test_missed_slots_are_counted_up_to_now():
    assert parser.missed_slots(parser.parse("every:5"), minutes(5), minutes(5)) == 1
    assert parser.missed_slots(parser.parse("every:5"), minutes(5), minutes(27)) == 5


def test_the_parser_imports_no_database_no_flask_and_nothing_that_fires():
    """models.py imports the parser (Connection.manual_only): it must stay pure."""
    tree = ast.parse(Path(parser.__file__).read_text())
    imported = {("." * node.level) + (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert imported == {"dataclasses", "datetime", "croniter", "..connectors.errors"}
