"""Whether a drain's next batch goes out side by side (the sending threads) or one request at
a time in the drain's own thread (worker/outbox_sender.py; docs/OUTBOX.md, "Sending").

Side by side pays when requests wait on the provider: five in flight cover five waits. When
the provider answers at once, the drain is held by its own CPU, and Python runs one thread at
a time: more threads then only add their hand-offs, about 0.2 ms of CPU per request here,
which made a drain slower than one request after another (docs/PERFORMANCE.md, "Side by side
only when it pays"). So the drain watches what each batch cost:
  - a batch side by side that kept this process busy (its CPU time at least BUSY of the
    batch's wall time: it was held by its own CPU, not by the provider) is followed by one
    sent one at a time;
  - a batch one at a time that went slower than the last batch side by side goes back to
    side by side, and stays there RETRY_EVERY batches before it tries again;
  - one at a time that was faster stays, and tries side by side again every RETRY_EVERY
    batches (the provider may have slowed down).
A provider that makes requests wait never keeps the process busy: its batches stay side by
side from the first.
"""
import time

BUSY = 0.85  # of one core
RETRY_EVERY = 20  # batches
MIN_EVENTS = 10  # a smaller batch says too little about a rate


class Pace:
    def __init__(self, side_by_side_allowed, clock=time.perf_counter, cpu_clock=time.process_time):
        self.allowed = side_by_side_allowed
        self.side_by_side = side_by_side_allowed
        self._clock, self._cpu_clock = clock, cpu_clock
        self._rates = {True: None, False: None}  # events/s of the last counted batch of each way
        self._batches = 0  # counted since the last change of way
        self._started = None

    def batch_started(self):
        self._started = (self._clock(), self._cpu_clock())

    def batch_done(self, events):
        """A batch of `events` was sent (and its outcomes written) since batch_started."""
        if self._started is None:
            return
        (wall_at, cpu_at), self._started = self._started, None
        wall, cpu = self._clock() - wall_at, self._cpu_clock() - cpu_at
        if not self.allowed or events < MIN_EVENTS or wall <= 0:
            return
        way = self.side_by_side
        self._rates[way] = events / wall
        self._batches += 1
        one_at_a_time = self._rates[False]
        if way:
            busy = cpu / wall >= BUSY
            if busy and (one_at_a_time is None or one_at_a_time > self._rates[True]
                         or self._batches >= RETRY_EVERY):
                self._change(False)
        elif one_at_a_time < (self._rates[True] or 0) or self._batches >= RETRY_EVERY:
            self._change(True)

    def _change(self, side_by_side):
        self.side_by_side = side_by_side
        self._batches = 0
