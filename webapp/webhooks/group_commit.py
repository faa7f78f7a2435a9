"""Group commit: the rows of many request threads written together, each thread answered
only once its own row is written.

Why: a webhook is acknowledged only after its delivery is committed (a 2xx means stored),
and a commit is the expensive part of a small INSERT (a WAL flush on PostgreSQL, the write
lock and a WAL append on SQLite). Committed one per request, every delivery paid for it and
the database served a connection per busy thread; in groups, a commit is paid per batch and
the database serves a few writers. What that saves, and why one writer per process is the
default, is measured in docs/PERFORMANCE.md ("Webhook ingest").

How: a thread hands its row over with submit(). If fewer than `writers` batches are being
written, it writes one itself: every row queued at that moment, its own among them.
Otherwise it waits, and is woken either with its row written (or refused) by another
thread's batch, or to write the next batch itself, which is how a finishing writer hands on
its turn. When the database keeps up, a row is written at once by its own thread, with no
hand-off; when it does not, rows pile up behind the writers and go in together. The batches
grow by themselves.

What it guarantees:
- submit() returns the row's own result once the batch that held it is written, or raises
  the row's own error; a batch that fails as a whole gives every row in it that error.
- At most `writers` batches are written at a time, of at most `max_batch` rows each.
- A row still waiting in the queue after `wait_seconds` is dropped and its submit() raises
  NotWrittenInTime (the caller answers "retry later"). A row already in a batch being
  written is never dropped: its thread waits for the outcome.
- Each process has its own writers: a forked child must make a new GroupCommitWriter, never
  use its parent's (in_this_process() tells).

Knows nothing of SQL: `write_batch(rows)` does the writing and returns one outcome per row,
in order, a result or an exception instance.
"""
import collections
import logging
import os
import threading
import time

log = logging.getLogger(__name__)


class NotWrittenInTime(Exception):
    """The row waited in the queue for longer than the writer's wait_seconds: it was dropped."""


class _Pending:
    """A row handed over by a request thread, and what became of it."""

    __slots__ = ("row", "wake", "settled", "result", "error", "lead")

    def __init__(self, row):
        self.row, self.wake = row, threading.Event()
        self.settled, self.result, self.error, self.lead = False, None, None, False

    def settle(self, result=None, error=None):
        self.result, self.error, self.settled = result, error, True
        self.wake.set()


class GroupCommitWriter:
    def __init__(self, write_batch, *, writers, max_batch, wait_seconds):
        self.pid = os.getpid()
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._queued = collections.deque()
        self._free = max(1, writers)
        self.batches = 0  # batches written, for tests and curiosity

    def in_this_process(self):
        """False in a forked child, which must make its own writer: its threads must not
        share the parent's queue, turns or lock."""
        return self.pid == os.getpid()

    def submit(self, row):
        """Write `row` with whatever else is queued; its outcome (see the module's docstring)."""
        me = _Pending(row)
        with self._lock:
            self._queued.append(me)
            if self._free > 0:
                self._free -= 1
                me.lead = True
        deadline = time.monotonic() + self._wait_seconds
        while True:
            if me.lead:  # this thread's turn to write (its own row may be in someone else's batch)
                me.lead = False
                self._write_next_batch()
            if me.settled:
                break
            me.wake.clear()  # flags are set before the event, so nothing is missed in between
            if me.settled or me.lead:
                continue
            if not me.wake.wait(max(0.0, deadline - time.monotonic())):
                self._give_up(me)  # raises, unless the row is being written: then wait for that
                deadline = time.monotonic() + self._wait_seconds
        if me.error is not None:
            raise me.error
        return me.result

    def _give_up(self, me):
        """The wait ran out. Raises NotWrittenInTime if the row is still only queued (it is
        dropped); returns if it is being written or its turn came."""
        with self._lock:
            if me.settled or me.lead:
                return
            try:
                self._queued.remove(me)
            except ValueError:  # in a batch being written right now: its outcome is coming
                return
        raise NotWrittenInTime(f"not written within {self._wait_seconds} s")

    def _write_next_batch(self):
        with self._lock:
            batch = [self._queued.popleft() for _ in range(min(self._max_batch, len(self._queued)))]
        try:
            if batch:
                self.batches += 1
                outcomes = self._write_batch([pending.row for pending in batch])
                for pending, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        pending.settle(error=outcome)
                    else:
                        pending.settle(outcome)
        except Exception as exc:  # never leave a request waiting
            log.exception("group commit: batch of %d failed", len(batch))
            for pending in batch:
                if not pending.settled:
                    pending.settle(error=exc)
        finally:
            with self._lock:  # hand the turn on to the oldest row not already given one, or free it
                for pending in self._queued:
                    if not pending.lead:
                        pending.lead = True
                        pending.wake.set()
                        break
                else:
                    self._free += 1
