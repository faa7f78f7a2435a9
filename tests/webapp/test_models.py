"""What the tables themselves decide."""
import pytest

from webapp.models import Connection


@pytest.mark.parametrize("schedule, manual_only", [
    ("manual", True), ("MANUAL", True), (" manual ", True),
    ("", True), ("every:0", True), ("hourly:60", True), ("cron:not cron", True), ("weekly:1", True),
    ("every:5", False), ("EVERY: 15", False), ("hourly:0", False), ("cron:30 2 * * 1-5", False), ("cron:@daily", False),
])
def test_manual_only_unless_the_schedule_is_a_usable_automatic_one(schedule, manual_only):
    # An unusable schedule counts as manual: a typo must not start a connection running by itself.
    assert Connection(name="c", connector="sandbox", schedule=schedule).manual_only is manual_only
