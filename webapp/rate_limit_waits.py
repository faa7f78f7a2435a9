"""Seconds a run's requests waited for rate-limit budget or a provider's Retry-After. The
HTTP client reports each wait here (webapp/connectors/http.py); the metric for /metrics is
counted per limiter host as before, and the run being executed adds the seconds to its
tally, which the engine writes to the run with each page and at the end (runs.
rate_limit_wait_seconds), and so into the roll-ups the statistics read (webapp/rollups.py).

Which run: the tally in the context (the engine sets it, and its page-fetch thread copies
the context), else the tally of the run this process executes (connectors' own thread
pools do not copy the context; a worker process executes one run at a time).
"""
import contextvars
import threading
from contextlib import contextmanager

from . import metrics

_context = contextvars.ContextVar("synchub_rate_limit_tally", default=None)
_process = None


class Tally:
    def __init__(self):
        self._lock = threading.Lock()
        self._pending = 0.0

    def add(self, seconds):
        with self._lock:
            self._pending += seconds

    def take(self):
        """The seconds waited since the last take (what the next write adds to the run)."""
        with self._lock:
            seconds, self._pending = self._pending, 0.0
        return seconds


@contextmanager
def counting(tally):
    """While a run executes: waits in this context (and, failing one, this process) go to `tally`."""
    global _process
    token = _context.set(tally)
    _process = tally
    try:
        yield tally
    finally:
        _context.reset(token)
        if _process is tally:
            _process = None


def waited(seconds, key):
    """A request waited `seconds` for the limiter `key` (a host)."""
    metrics.inc("rate_limit_wait_seconds", seconds, key=key)
    tally = _context.get() or _process
    if tally is not None:
        tally.add(seconds)
