"""Dates as providers send them: ISO-8601 text, read leniently."""
from datetime import datetime, timezone


def parse_time(value):
    """An aware datetime from ISO-8601 text ("Z" or an offset; none means UTC), else None."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
