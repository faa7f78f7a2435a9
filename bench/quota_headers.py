"""429s per 1,000 requests when another app spends part of the same provider quota, with
and without the provider's X-RateLimit-Remaining fed to our shared limiter (issue 19).

    .venv/bin/python -m bench.quota_headers [--requests 300] [--foreign-rate 4]

The HighLevel simulator (its own process) allows 20 requests per 2 s per location and
answers X-RateLimit-Remaining. A foreign app sends `--foreign-rate` requests per second to
the same location, outside our limiter. Our client (the connectors' HttpClient, 4 threads,
a Redis limiter of 20 per 2.05 s, as a connector configures it) sends `--requests` GETs.
Same run, same load: first with the header ignored (the baseline: our log knows only our
own requests), then with it used. Printed: our 429s per 1,000 of our requests, and the
time each took.
"""
import argparse
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
import requests

from bench.common import Simulator
from webapp.connectors.http import HttpClient
from webapp.connectors.ratelimit import RedisRateLimiter

LIMIT, WINDOW = 20, 2.0
TOKEN, LOCATION = "pit-sim-token", "loc-sim-1"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Version": "2021-07-28"}


class CountingSession(requests.Session):
    def __init__(self):
        super().__init__()
        self.statuses, self._lock = {}, threading.Lock()

    def request(self, *args, **kwargs):
        resp = super().request(*args, **kwargs)
        with self._lock:
            self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        return resp


def foreign_app(url, rate, stop):
    """Another app on the same location: `rate` requests per second, whatever it is told."""
    session = requests.Session()
    while not stop.is_set():
        started = time.monotonic()
        session.get(f"{url}/products/", params={"locationId": LOCATION, "limit": 1}, headers=HEADERS, timeout=10)
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))


def one_pass(url, redis_client, count, use_headers):
    session = CountingSession()
    limiter = RedisRateLimiter(redis_client, f"bench-quota:{uuid.uuid4().hex}", LIMIT, WINDOW * 1.025)
    client = HttpClient(url, rate_limiter=limiter, session=session, headers=HEADERS, quota_headers=use_headers,
                        max_retries=20, backoff_base=0.2, backoff_max=2.0)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: client.get_json("/products/", params={"locationId": LOCATION, "limit": 1}),
                      range(count)))
    return session.statuses, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.quota_headers")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--foreign-rate", type=float, default=4.0, help="the other app's requests per second")
    args = parser.parse_args()
    from tests.support import RedisServer

    redis_server = RedisServer().start()
    simulator = Simulator("highlevel", "--orders", "5", "--rate-limit", f"{LIMIT}/{WINDOW:g}")
    stop = threading.Event()
    foreign = threading.Thread(target=foreign_app, args=(simulator.url, args.foreign_rate, stop), daemon=True)
    try:
        foreign.start()
        time.sleep(WINDOW)  # the other app is already spending when we start
        client = redis.Redis.from_url(redis_server.url)
        results = {}
        for label, use in (("header ignored (baseline)", False), ("X-RateLimit-Remaining used", True)):
            statuses, seconds = one_pass(simulator.url, client, args.requests, use)
            ours = sum(statuses.values())
            per_thousand = 1000 * statuses.get(429, 0) / ours
            results[label] = per_thousand
            print(f"{label:28s} {statuses.get(429, 0):4d} 429s in {ours:5d} requests = {per_thousand:6.1f} per 1,000, "
                  f"{seconds:5.1f} s for {args.requests} answers", flush=True)
        before, after = results.values()
        print(f"ratio (used / ignored): {after / before:.2f}" if before else "no 429s without the header either")
    finally:
        stop.set()
        foreign.join(timeout=5)
        simulator.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
