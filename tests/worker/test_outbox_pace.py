"""When a drain sends side by side and when one request at a time (worker/outbox_pace.py),
driven by injected clocks: what each batch cost decides the next one's way."""
from worker.outbox_pace import MIN_EVENTS, RETRY_EVERY, Pace


class Clocks:
    """Wall and CPU clocks a test moves by hand."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def batch(self, pace, events, wall, cpu):
        pace.batch_started()
        self.wall += wall
        self.cpu += cpu
        pace.batch_done(events)


def make():
    clocks = Clocks()
    return Pace(True, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu), clocks


BUSY_SIDE_BY_SIDE = dict(wall=0.060, cpu=0.058)  # held by our own CPU, not by the provider


def test_side_by_side_that_keeps_the_process_busy_is_followed_by_one_at_a_time():
    pace, clocks = make()
    assert pace.side_by_side
    clocks.batch(pace, 10, **BUSY_SIDE_BY_SIDE)  # the first batch after a start carries its costs
    assert pace.side_by_side
    clocks.batch(pace, 50, **BUSY_SIDE_BY_SIDE)  # judged on the second
    assert not pace.side_by_side


def test_requests_that_wait_on_the_provider_stay_side_by_side():
    pace, clocks = make()
    for _ in range(3 * RETRY_EVERY):
        clocks.batch(pace, 50, wall=1.0, cpu=0.05)  # a 100 ms provider: the process mostly waits
        assert pace.side_by_side


def test_one_at_a_time_slower_than_side_by_side_goes_back_and_stays_there_a_while():
    pace, clocks = make()
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)  # busy: try one at a time
    assert not pace.side_by_side
    clocks.batch(pace, 50, wall=0.200, cpu=0.040)  # the change's own costs: not judged
    assert not pace.side_by_side
    clocks.batch(pace, 50, wall=0.080, cpu=0.040)  # slower than the 0.050 side by side
    assert pace.side_by_side
    for _ in range(RETRY_EVERY - 1):
        clocks.batch(pace, 50, wall=0.050, cpu=0.048)  # busy again, but one at a time lost
        assert pace.side_by_side
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)
    assert not pace.side_by_side  # time to look again


def test_one_at_a_time_as_fast_stays_and_looks_at_side_by_side_again_every_so_often():
    pace, clocks = make()
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)
    assert not pace.side_by_side
    for _ in range(RETRY_EVERY - 1):
        clocks.batch(pace, 50, wall=0.051, cpu=0.035)  # within TIE of side by side: it stays
        assert not pace.side_by_side
    clocks.batch(pace, 50, wall=0.051, cpu=0.035)
    assert pace.side_by_side  # the provider may have slowed down since
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)
    clocks.batch(pace, 50, wall=0.050, cpu=0.048)  # it has not: busy, and no faster
    assert not pace.side_by_side


def test_small_batches_and_a_sender_allowed_one_at_a_time_change_nothing():
    pace, clocks = make()
    clocks.batch(pace, MIN_EVENTS - 1, wall=0.010, cpu=0.010)
    assert pace.side_by_side
    clocks_one = Clocks()
    one = Pace(False, clock=lambda: clocks_one.wall, cpu_clock=lambda: clocks_one.cpu)
    for _ in range(3 * RETRY_EVERY):
        clocks_one.batch(one, 50, wall=1.0, cpu=0.01)
        assert not one.side_by_side


def test_a_drains_first_batch_is_small_and_the_next_are_full():
    from worker.outbox_pace import FIRST_BATCH

    pace, clocks = make()
    assert pace.batch_limit(50) == FIRST_BATCH  # sent side by side before anything is known
    clocks.batch(pace, FIRST_BATCH, wall=0.010, cpu=0.0095)
    assert pace.batch_limit(50) == 50
    one = Pace(False)
    assert one.batch_limit(50) == 50  # one at a time anyway: nothing to find out
