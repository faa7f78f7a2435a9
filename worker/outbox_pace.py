"""Whether a drain's next batch goes out side by side (the sending threads) or one request at
a time in the drain's own thread (worker/outbox_sender.py; docs/OUTBOX.md, "Sending").

Side by side pays when requests wait on the provider: five in flight cover five waits. When
the provider answers at once, the drain is held by its own CPU, and Python runs one thread at
a time: more threads then only add their hand-offs, about 0.2 ms of CPU per request here,
which made a drain slower than one request after another (docs/PERFORMANCE.md, "Side by side
only when it pays"). So the drain watches what each batch cost:
  - a batch side by side that kept this process busy (its CPU time at least BUSY of the
    batch's wall time: it was held by its own CPU, not by the provider) is followed by
    batches sent one at a time;
  - one at a time that went slower than side by side (by more than TIE) goes back to side by
    side, and stays there RETRY_EVERY batches before it tries again;
  - one at a time that was as fast stays (it spends less CPU), and tries side by side again
    every RETRY_EVERY batches (the provider may have slowed down).
A way is judged on its second batch: the first after a change carries the change's costs
(the next batch was claimed the old way, threads are started), and one batch's rate is noisy
enough as it is.
A provider that makes requests wait never keeps the process busy: its batches stay side by
side from the first. The first batch of a drain is small (FIRST_BATCH rows): it is sent side
by side before anything is known, which costs little either way.
"""
import time

BUSY = 0.75  # of one core
TIE = 0.95  # one at a time within 5 % of side by side counts as no slower
RETRY_EVERY = 50  # batches
MIN_EVENTS = 10  # a smaller batch says too little about a rate
FIRST_BATCH = MIN_EVENTS


class Pace:
    def __init__(self, side_by_side_allowed, clock=time.perf_counter, cpu_clock=time.process_time):
        self.allowed = side_by_side_allowed
        self.side_by_side = side_by_side_allowed
        self._clock, self._cpu_clock = clock, cpu_clock
        self._rates = {True: None, False: None}  # events/s of the last counted batch of each way
        self._batches = 0  # counted since the last change of way
        self._started = None
        self._first = side_by_side_allowed  # no batch counted yet

    def batch_limit(self, full):
        """How many rows the next claim should take, of a full batch of `full`."""
        return min(full, FIRST_BATCH) if self._first else full

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
        self._first = False
        self._batches += 1
        settled = self._batches >= 2
        if settled or self._rates[way] is None:
            self._rates[way] = events / wall
        if not settled:
            return
        side_by_side, one_at_a_time = self._rates[True], self._rates[False]
        if way:
            busy = cpu / wall >= BUSY
            if busy and (one_at_a_time is None or one_at_a_time >= side_by_side * TIE
                         or self._batches >= RETRY_EVERY):
                self._change(False)
        elif (side_by_side is not None and one_at_a_time < side_by_side * TIE) or self._batches >= RETRY_EVERY:
            self._change(True)

    def _change(self, side_by_side):
        self.side_by_side = side_by_side
        self._batches = 0
