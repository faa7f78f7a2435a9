"""The Redis lease: one leader at a time, renewed while alive, taken over after expiry."""
import time
import uuid

import pytest
import redis as redis_lib

from scheduler.leader import Lease, holder
from tests.support import RedisServer, wait_for


@pytest.fixture
def client(redis_url):
    return redis_lib.Redis.from_url(redis_url)


@pytest.fixture
def key(client):
    name = f"test:leader:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def test_only_one_of_two_supervisors_leads(client, key):
    a, b = Lease(client, "a", 5, key=key), Lease(client, "b", 5, key=key)
    assert a.acquire_or_renew() and not b.acquire_or_renew()
    assert a.held and not b.held
    assert holder(client, key) == "a"


def test_leader_keeps_the_lease_by_renewing_it(client, key):
    # Driven by the lease's remaining time in Redis, not by a sleep against its TTL: each
    # round waits until part of the lease has run out, then the renewal must restore all of
    # it, and the rival is refused throughout. A 10 s lease: a busy machine's stall of
    # several seconds still cannot let it lapse between the look and the renewal.
    a, b = Lease(client, "a", 10, key=key), Lease(client, "b", 10, key=key)
    assert a.acquire_or_renew()
    for _ in range(3):
        wait_for(lambda: client.pttl(key) < 9500, timeout=30, interval=0.05, message="part of the lease to run out")
        assert not b.acquire_or_renew()
        assert a.acquire_or_renew()
        assert client.pttl(key) > 9500 and holder(client, key) == "a"


def test_dead_leader_is_replaced_once_its_lease_expires(client, key):
    a, b = Lease(client, "a", 0.4, key=key), Lease(client, "b", 0.4, key=key)
    assert a.acquire_or_renew()
    died = time.monotonic()  # a stops renewing, as if killed
    while not b.acquire_or_renew():
        time.sleep(0.02)
    took_over = time.monotonic() - died
    # Never before the lease lapsed (Redis' expiry: the bound that matters); the upper bound
    # is loose, since how soon after the expiry b looks again is the machine's business.
    assert 0.3 <= took_over <= 10
    assert not a.acquire_or_renew()  # a zombie that wakes up does not lead again


def test_release_hands_leadership_over_at_once(client, key):
    a, b = Lease(client, "a", 30, key=key), Lease(client, "b", 30, key=key)
    assert a.acquire_or_renew()
    assert not b.release()  # only the holder can release
    assert a.release() and not a.held
    assert b.acquire_or_renew()


def test_lease_counts_as_lost_locally_when_not_renewed_within_its_ttl(client, key):
    now = [100.0]
    lease = Lease(client, "a", 10, key=key, monotonic=lambda: now[0])
    assert lease.acquire_or_renew() and lease.held
    now[0] += 9.9
    assert lease.held
    now[0] += 0.2
    assert not lease.held  # leader-only steps stop even before Redis says so


def test_nobody_leads_while_redis_is_down():
    server = RedisServer().start()
    try:
        client = redis_lib.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        lease = Lease(client, "a", 30, key="test:leader")
        assert lease.acquire_or_renew()
        server.stop()
        assert not lease.acquire_or_renew() and not lease.held
        assert holder(client, "test:leader") is None
    finally:
        server.stop()
