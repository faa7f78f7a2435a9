"""The supervisor's notion of "now", injectable so tests can run an hour in seconds and
chaos tests can jump it. Business time only: lease expiry and step cadence stay on the
real clock, so a jumped clock can never make two supervisors lead at once.

A clock file (--clock-file / SYNCHUB_CLOCK_FILE) holds either an ISO timestamp (naive
UTC, or ending in Z): the clock stands at that instant, or a signed number of seconds
such as +3600 or -90: real time shifted by that much. It is re-read on every call.
"""
from datetime import datetime, timedelta

from webapp.models import utcnow


def system_clock():
    return utcnow()


class FileClock:
    def __init__(self, path):
        self.path = path

    def __call__(self):
        with open(self.path) as f:
            text = f.read().strip()
        if not text:
            raise ValueError(f"clock file {self.path} is empty: write an ISO timestamp or +/-seconds")
        if text[0] in "+-":
            return utcnow() + timedelta(seconds=float(text))
        try:
            moment = datetime.fromisoformat(text.removesuffix("Z"))
        except ValueError:
            raise ValueError(f"clock file {self.path}: {text!r} is neither an ISO timestamp nor +/-seconds") from None
        if moment.tzinfo is not None:
            moment = (moment - moment.utcoffset()).replace(tzinfo=None)
        return moment


def make_clock(path=None):
    return FileClock(path) if path else system_clock
