"""The GroupCommitWriter's promises, with a write_batch that the test holds and releases:
rows that queue behind a batch go in together, each thread gets its own row's outcome, a
failed batch answers all its rows, and only a row still queued is ever given up on."""
import threading
import time

import pytest

from tests.support import wait_for
from webapp.webhooks.group_commit import GroupCommitWriter, NotWrittenInTime


class HeldBatches:
    """A write_batch that records each batch and waits until the test lets it finish."""

    def __init__(self, fail_with=None):
        self.batches, self.release, self.fail_with = [], threading.Event(), fail_with

    def __call__(self, rows):
        self.batches.append(list(rows))
        self.release.wait(30)
        if self.fail_with is not None:
            raise self.fail_with
        return [ValueError(f"refused {row}") if row.startswith("bad") else f"written {row}" for row in rows]


def _submit_in_threads(writer, rows):
    outcomes = {}

    def submit(row):
        try:
            outcomes[row] = writer.submit(row)
        except Exception as exc:
            outcomes[row] = exc

    threads = {row: threading.Thread(target=submit, args=(row,)) for row in rows}
    return threads, outcomes


def test_rows_queued_behind_a_batch_go_in_together_and_each_gets_its_own_outcome():
    write = HeldBatches()
    writer = GroupCommitWriter(write, writers=1, max_batch=100, wait_seconds=30)
    threads, outcomes = _submit_in_threads(writer, ["first", "a", "bad-b", "c"])
    threads["first"].start()
    wait_for(lambda: write.batches, timeout=10, message="the first batch")
    for row in ("a", "bad-b", "c"):
        threads[row].start()
    wait_for(lambda: len(writer._queued) == 3, timeout=10, message="three rows queued")
    assert outcomes == {}  # nothing is answered before its batch is written
    write.release.set()
    for thread in threads.values():
        thread.join(30)

    assert write.batches == [["first"], ["a", "bad-b", "c"]]
    assert outcomes["first"] == "written first" and outcomes["a"] == "written a" and outcomes["c"] == "written c"
    assert isinstance(outcomes["bad-b"], ValueError)  # only its own thread sees the refusal
    assert writer._free == 1  # the turn was handed back


def test_a_batch_that_fails_answers_every_row_in_it_and_the_next_batch_is_still_written():
    write = HeldBatches(fail_with=RuntimeError("the database went away"))
    writer = GroupCommitWriter(write, writers=1, max_batch=100, wait_seconds=30)
    threads, outcomes = _submit_in_threads(writer, ["first", "second"])
    threads["first"].start()
    wait_for(lambda: write.batches, timeout=10, message="the first batch")
    threads["second"].start()
    wait_for(lambda: writer._queued, timeout=10, message="the second row queued")
    write.release.set()
    for thread in threads.values():
        thread.join(30)

    assert write.batches == [["first"], ["second"]]
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes.values())
    assert writer._free == 1


def test_a_row_still_queued_is_given_up_on_but_a_row_being_written_is_waited_for():
    write = HeldBatches()
    writer = GroupCommitWriter(write, writers=1, max_batch=100, wait_seconds=0.2)
    threads, outcomes = _submit_in_threads(writer, ["first", "late"])
    threads["first"].start()
    wait_for(lambda: write.batches, timeout=10, message="the first batch")
    threads["late"].start()
    threads["late"].join(30)  # it waits its 0.2 s in the queue, then gives up
    assert isinstance(outcomes["late"], NotWrittenInTime)
    assert "first" not in outcomes  # far past 0.2 s, but its batch is being written: it waits
    write.release.set()
    threads["first"].join(30)

    assert outcomes["first"] == "written first"
    assert write.batches == [["first"]]  # the dropped row was never written
    assert writer._free == 1 and not writer._queued


@pytest.mark.parametrize("writers", [1, 3])
def test_batches_never_exceed_max_batch_nor_the_writers_at_once(writers):
    sizes, in_flight, most = [], [0], [0]
    lock = threading.Lock()

    def write(rows):
        with lock:
            sizes.append(len(rows))
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.005)  # long enough for rows to pile up behind the writers
        with lock:
            in_flight[0] -= 1
        return [f"written {row}" for row in rows]

    writer = GroupCommitWriter(write, writers=writers, max_batch=4, wait_seconds=30)
    threads, outcomes = _submit_in_threads(writer, [f"row-{n}" for n in range(60)])
    for thread in threads.values():
        thread.start()
    for thread in threads.values():
        thread.join(30)

    assert outcomes == {f"row-{n}": f"written row-{n}" for n in range(60)}
    assert max(sizes) <= 4 and sum(sizes) == 60
    assert most[0] <= writers and writer._free == writers
