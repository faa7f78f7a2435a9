"""Rate limiters: never more than N admissions in any window, in-process and through Redis."""
import multiprocessing
import threading
import uuid

import pytest
import redis as redis_lib
import requests

from tests.simulators.harness import RecordsAPI, make_records
from webapp.connectors.errors import ConfigError, RateLimited, TransientError
from webapp.connectors.http import HttpClient
from webapp.connectors.ratelimit import LocalRateLimiter, RedisRateLimiter, make_rate_limiter


def assert_at_most_n_per_window(times, n, window):
    """Any window of `window` seconds holds at most n of `times`: the (i+n)-th admission
    is at least `window` after the i-th."""
    times = sorted(times)
    for i in range(len(times) - n):
        assert times[i + n] - times[i] >= window - 1e-6, f"{n + 1} admissions within {times[i + n] - times[i]:.4f}s"


def acquire_in_threads(make_limiter, threads, each):
    admitted, lock = [], threading.Lock()

    def work():
        limiter = make_limiter()
        for _ in range(each):
            t = limiter.acquire()
            with lock:
                admitted.append(t)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return admitted


def test_local_limiter_holds_the_bound_across_threads():
    limiter = LocalRateLimiter(5, 1.0)
    admitted = acquire_in_threads(lambda: limiter, threads=4, each=5)

    assert len(admitted) == 20
    assert_at_most_n_per_window(admitted, 5, 1.0)
    # ...and it does not throttle harder than asked: 20 at 5 per second need just over 3 s
    # (the slack is for a busy machine; half the rate would need 6 s).
    assert max(admitted) - min(admitted) < 3.0 + 1.5


def test_local_limiters_are_shared_per_key_within_a_process():
    key = f"test:{uuid.uuid4().hex}"
    first = make_rate_limiter(None, key, (3, 1))
    assert make_rate_limiter(None, key, [3, 1]) is first
    assert make_rate_limiter(None, key + "-other", (3, 1)) is not first


@pytest.mark.parametrize("bad", [None, (0, 1), (1, 0), ("many", 1), (1, 2, 3), "10/s"])
def test_invalid_rate_limits_are_config_errors(bad):
    with pytest.raises(ConfigError):
        make_rate_limiter(None, "k", bad)


def test_redis_limiter_holds_the_bound_across_clients(limiter_redis_url):
    key = f"test:{uuid.uuid4().hex}"

    def make():  # each thread its own connection, as separate workers would have
        return make_rate_limiter(redis_lib.Redis.from_url(limiter_redis_url), key, (5, 1.0))

    admitted = acquire_in_threads(make, threads=4, each=5)

    assert len(admitted) == 20
    assert_at_most_n_per_window(admitted, 5, 1.0)
    assert max(admitted) - min(admitted) < 3.0 + 1.5


def test_redis_limiter_key_is_prefixed_and_expires(limiter_redis_url):
    client = redis_lib.Redis.from_url(limiter_redis_url)
    key = f"test:{uuid.uuid4().hex}"
    limiter = make_rate_limiter(client, key, (2, 1.5))
    assert isinstance(limiter, RedisRateLimiter)

    limiter.acquire()

    assert client.zcard(key) == 1
    assert 0 < client.pttl(key) <= 1500 + 1000  # idle keys do not pile up


def test_redis_down_is_a_transient_error():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.connectors.conftest import free_port

    client = redis_lib.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    with pytest.raises(TransientError, match="rate limiter unavailable"):
        make_rate_limiter(client, "k", (1, 1)).acquire()


def _acquire_in_process(url, key, count, me, other, ready, go, queue):
    """Acquire `count` slots, and go on until the other process has taken one too: however
    late the machine wakes either of them, their acquisitions overlap in time."""
    client = redis_lib.Redis.from_url(url)
    limiter = make_rate_limiter(client, key, (4, 0.3))
    ready.put(True)
    go.wait(30)
    times = []
    while len(times) < count or not client.exists(f"{key}:started:{other}"):
        times.append(limiter.acquire())
        client.set(f"{key}:started:{me}", 1, ex=60)
        if len(times) > 400:  # about 30 s at this rate: the other process never came
            break
    queue.put(times)


def test_redis_limiter_is_shared_by_processes(limiter_redis_url):
    key = f"test:{uuid.uuid4().hex}"
    ctx = multiprocessing.get_context("spawn")
    ready, go, queue = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_acquire_in_process, args=(limiter_redis_url, key, 8, me, 1 - me, ready, go, queue))
             for me in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=30)
    go.set()  # both compete from the same moment, so the budget really is contended
    first, second = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)

    assert len(first) >= 8 and len(second) >= 8 and len(first) + len(second) < 800
    assert min(first) < max(second) and min(second) < max(first)  # they overlapped in time
    assert_at_most_n_per_window(first + second, 4, 0.3)


def test_provider_sees_no_violations_from_two_workers_sharing_a_redis_limit(serve, limiter_redis_url):
    # The simulator counts arrivals over a window a little shorter than the limiter's: the
    # time between admission and arrival varies per request (more on a loaded machine), and
    # a real client keeps a margin for that too.
    server = serve(RecordsAPI(make_records(5), rate_limit=(5, 0.4)))
    key = f"test:{uuid.uuid4().hex}"

    def worker():
        limiter = make_rate_limiter(redis_lib.Redis.from_url(limiter_redis_url), key, (5, 0.5))
        client = HttpClient(server.url, rate_limiter=limiter, max_retries=0)
        for _ in range(10):
            client.get_json("/items")

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(server.log) == 20
    assert server.app.violations == 0


def test_without_a_limiter_the_provider_does_count_violations(serve):
    # The control for the test above: the simulator's enforcement is real.
    server = serve(RecordsAPI(make_records(5), rate_limit=(5, 0.45)))
    client = HttpClient(server.url, max_retry_after=0)
    for _ in range(8):
        try:
            client.get_json("/items")
        except RateLimited:
            pass
    assert server.app.violations >= 3


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
def test_a_slot_counts_from_its_answer_and_a_dead_holders_slot_lapses(shared, limiter_redis_url):
    """slot(): a request in flight keeps its place in the log, which then counts from its
    answer, so the provider can never see more than n requests within a window however late
    they reach it. A process that dies in flight frees its slot after max_in_flight."""
    import time

    def make():
        if shared:
            return make_rate_limiter(redis_lib.Redis.from_url(limiter_redis_url), str(uuid.uuid4()), (2, 0.3))
        return LocalRateLimiter(2, 0.3)

    limiter = make()
    with limiter.slot(max_in_flight=5):
        time.sleep(0.4)  # longer than the window: an admission bound would have let it go
        answered = time.monotonic()
        limiter.acquire()  # the second place of the window
    limiter.acquire()  # waits a window from the answer, not from the admission 0.4 s before it
    assert time.monotonic() >= answered + 0.3 - 0.01

    limiter = make()
    held = limiter.slot(max_in_flight=0.2)
    held.__enter__()  # ...and its process dies before the answer: never settled
    started = time.monotonic()
    for _ in range(3):  # at once, after a window, then once the dead slot has lapsed
        limiter.acquire()
    # Not before the dead slot lapsed and a window passed; and not forever (the bound is loose:
    # how soon after that this thread runs again is the machine's business).
    assert 0.2 + 0.3 - 0.02 <= time.monotonic() - started < 5


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
def test_the_providers_remaining_count_takes_what_others_spent_from_our_budget(shared, limiter_redis_url):
    waits = []

    def no_sleep(seconds):
        waits.append(seconds)
        raise InterruptedError("the limiter would wait")

    if shared:
        limiter = RedisRateLimiter(redis_lib.Redis.from_url(limiter_redis_url), f"test:{uuid.uuid4().hex}", 5, 30,
                                   sleep=no_sleep)
    else:
        limiter = LocalRateLimiter(5, 30, sleep=no_sleep)
    limiter.acquire()
    assert limiter.observe_remaining(4) == 0  # alone on the account: the provider agrees with us
    assert limiter.observe_remaining(2) == 2  # somebody else spent two: they count like ours
    limiter.acquire()
    limiter.acquire()
    with pytest.raises(InterruptedError):
        limiter.acquire()  # 1 + 2 + 2 = 5: the budget is spent, so it waits instead of earning a 429
    assert waits and limiter.observe_remaining(0) == 0


def test_an_http_client_slows_down_before_the_429_when_another_app_spent_the_quota(serve, limiter_redis_url):
    from tests.simulators.highlevel import HighLevelAPI

    headers = {"Authorization": "Bearer pit-sim-token", "Version": "2021-07-28"}

    def ours(quota_headers):
        """(our 429s, the provider's violations) on a fresh location of 10 requests per 2 s."""
        api = HighLevelAPI(orders=2, products=2, rate_limit=(10, 2.0))
        server = serve(api)
        products = {"locationId": api.location_id, "limit": 1}
        limiter = make_rate_limiter(redis_lib.Redis.from_url(limiter_redis_url), f"test:{uuid.uuid4().hex}", (10, 2.1))
        client = HttpClient(server.url, rate_limiter=limiter, headers=headers, quota_headers=quota_headers,
                            max_retries=0)
        for _ in range(4):  # another app on the same location spends most of the window
            assert requests.get(f"{server.url}/products/", params=products, headers=headers, timeout=10).ok
        refused = 0
        for _ in range(8):
            try:
                client.get_json("/products/", params=products)
            except RateLimited:
                refused += 1
        return refused, api.violations

    assert ours(quota_headers=True) == (0, 0)
    refused, violations = ours(quota_headers=False)  # the control: the header is what helped
    assert refused >= 1 and violations >= 1


def test_a_slots_settlement_rides_on_the_next_admission_and_settle_sends_the_rest(limiter_redis_url):
    """One Redis round trip per request: the answer of a slot is settled by the limiter's
    next admission; settle() settles what no admission followed. Until then the entry still
    counts as in flight (it holds its place longer, never shorter)."""
    client = redis_lib.Redis.from_url(limiter_redis_url)
    key = f"test:{uuid.uuid4().hex}"
    limiter = RedisRateLimiter(client, key, 10, 1.0)

    def score(n):
        return client.zscore(key, f"{limiter._prefix}:{n}")

    def redis_now():
        seconds, micros = client.time()
        return seconds * 1_000_000 + micros

    with limiter.slot(max_in_flight=30):
        pass
    assert score(1) > redis_now() + 20_000_000  # answered, not settled yet: still held as in flight
    with limiter.slot(max_in_flight=30):
        assert score(1) <= redis_now()  # settled by the second slot's admission
        assert score(2) > redis_now() + 20_000_000
    limiter.settle()
    assert score(2) <= redis_now()
    assert client.zcard(key) == 2  # both still count for the window after their answers

    # Half the window taken: a request may be waiting for the place, so it is given back at
    # the answer, as before.
    for n in (3, 4):
        with limiter.slot(max_in_flight=30):
            pass
        assert score(n) > redis_now() + 20_000_000
    with limiter.slot(max_in_flight=30):  # the fifth of ten places
        pass
    assert score(4) <= redis_now() and score(5) <= redis_now() and client.zcard(key) == 5


@pytest.fixture
def private_redis():
    """A redis-server of this test's own, so its command counts are this test's."""
    from tests.support import RedisServer

    server = RedisServer().start()
    try:
        yield redis_lib.Redis.from_url(server.url)
    finally:
        server.stop()


def round_trips(client):
    """How many times a limiter's scripts ran on `client`'s server (one round trip each; not
    counting the first call of each script, which Redis refuses until it is loaded)."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return stats.get("calls", 0) - stats.get("failed_calls", 0)


def test_far_from_its_limit_one_round_trip_admits_a_slot_and_seven_ahead(private_redis):
    key = f"test:{uuid.uuid4().hex}"
    limiter = RedisRateLimiter(private_redis, key, 1000, 1.0)
    for _ in range(12):
        with limiter.slot(max_in_flight=30):
            pass
    assert round_trips(private_redis) == 2  # slots 1 and 9 asked Redis; the rest were admitted ahead
    assert private_redis.zcard(key) == 16  # 12 used, 4 admitted ahead and not used yet
    limiter.settle()
    assert private_redis.zcard(key) == 12  # those 4 given back: only requests that went out count


def test_near_its_limit_a_limiter_admits_each_slot_on_its_own(private_redis):
    key = f"test:{uuid.uuid4().hex}"
    others = RedisRateLimiter(private_redis, key, 200, 30.0)
    for _ in range(100):
        others.acquire()  # another worker has half the window
    ours = RedisRateLimiter(private_redis, key, 200, 30.0)
    before = round_trips(private_redis)
    for _ in range(3):
        with ours.slot(max_in_flight=30):
            pass
    # Each admitted alone, and settled at its answer (a waiting request needs its place back).
    assert round_trips(private_redis) - before == 3 * 2
    assert private_redis.zcard(key) == 103


def test_a_member_admitted_ahead_is_not_used_once_its_reservation_ran_out_and_is_removed(private_redis):
    key = f"test:{uuid.uuid4().hex}"
    now = [1000.0]
    limiter = RedisRateLimiter(private_redis, key, 1000, 1.0, clock=lambda: now[0])
    with limiter.slot(max_in_flight=30):
        pass
    assert private_redis.zcard(key) == 8
    now[0] += RedisRateLimiter.AHEAD_SECONDS + 0.01  # the members ahead waited too long here
    with limiter.slot(max_in_flight=30):  # so this one is admitted afresh...
        pass
    assert round_trips(private_redis) == 2
    assert private_redis.zcard(key) == 2 + 7  # ...and the 7 that lapsed went in the same round trip
    limiter.settle()
    assert private_redis.zcard(key) == 2


def test_slots_admitted_ahead_keep_the_bound_across_threads(limiter_redis_url):
    """Four threads taking slots of one budget of 300 per 0.3 s, most of them admitted ahead:
    no window holds more than 300 requests."""
    import time

    key, started, lock = f"test:{uuid.uuid4().hex}", [], threading.Lock()

    def work():
        limiter = RedisRateLimiter(redis_lib.Redis.from_url(limiter_redis_url), key, 300, 0.3)
        for _ in range(200):
            with limiter.slot(max_in_flight=5):
                at = time.monotonic()  # the request goes out here
            with lock:
                started.append(at)
        limiter.settle()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 800
    assert_at_most_n_per_window(started, 300, 0.3)
