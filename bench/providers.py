"""Provider syncs against their simulators, each next to the lower bound its rate limit
and latency allow (computed from the requests this run made) and a bare baseline measured
in the same run.

    .venv/bin/python -m bench.providers [--only s4,halopsa,zoom,zoom_children] [--backend sqlite|postgresql]

- S4 (HighLevel): 150 orders -> 450 tickets, 200 ms per request, the real limit of 100
  requests per 10 s. Bound: floor((R - 1) / 100) * 10 s + one latency — the R-th request
  cannot leave before that. Baseline: the seed's way on a second simulator with the same
  data — one request at a time, one insert (and commit) per ticket.
- HaloPSA: full sync of 20,000 tickets, 100 ms per request, ~500 requests / 180 s. Bound:
  the rate limit's, plus the chain token -> first page (it tells the count) -> the rest;
  also the floor at the connector's pages in flight. Baseline: bare sequential paging, no
  database.
- Zoom: 10,000 webinars, 100 ms per request, list webinars is "medium" (20/s). next_page_token
  chains every page to the one before, so the bound is that chain or the rate limit, the
  larger. Baseline: bare sequential token paging, no database.

The engine runs in this process (worker.engine.execute_run, as a worker would), each
simulator in its own process; rate limits go through a real Redis.
"""
import argparse
import math
import os
import sqlite3
import tempfile
import time
import uuid

import requests

from bench.common import Simulator, ThrowawayDatabase
from webapp.connectors.halopsa import PAGE_CONCURRENCY

SEED_S4_SECONDS = 330  # the seed's own figure: 5 min 30 s for 150 orders / 450 tickets


def rate_bound(requests_made, limit, window, latency):
    """Least time for `requests_made` requests when at most `limit` may leave per `window`."""
    return (max(0, requests_made - 1) // limit) * window + latency


def _stats(sim):
    return requests.get(sim.url + "/__stats", timeout=10).json()


class Hub:
    """The app against a throwaway database, with a real Redis for the shared rate limits."""

    def __init__(self, backend, workdir, redis_url):
        os.environ.setdefault("SYNCHUB_INSTANCE_PATH", tempfile.mkdtemp(prefix="bench-instance-"))
        os.environ.setdefault("SYNCHUB_LOG_LEVEL", "WARNING")
        from flask_migrate import upgrade

        from webapp import create_app

        self.database = ThrowawayDatabase(backend, workdir)
        self.app = create_app({"SQLALCHEMY_DATABASE_URI": self.database.url, "REDIS_URL": redis_url})
        with self.app.app_context():
            upgrade()

    def sync(self, connector, settings, credentials, streams=None):
        from webapp import runs
        from webapp.extensions import db, redis_ext
        from webapp.models import Connection, Run
        from worker.engine import execute_run

        with self.app.app_context():
            conn = Connection(name=f"bench-{connector}-{uuid.uuid4().hex[:6]}", connector=connector, settings=settings)
            conn.credentials = credentials
            db.session.add(conn)
            db.session.commit()
            run_id = runs.trigger(conn, trigger="cli", streams=streams, enqueue=False).run.id
            started = time.perf_counter()
            status = execute_run(run_id, redis_client=redis_ext.client, worker_name="bench")
            elapsed = time.perf_counter() - started
            run = db.session.get(Run, run_id)
            assert status == "completed", (status, run.error_message)
            return elapsed, run.counters

    def close(self):
        from webapp.extensions import db

        with self.app.app_context():
            db.engine.dispose()
        self.database.drop()


def _row(label, seconds, note=""):
    print(f"  {label:<34}{seconds:>9.2f} s  {note}", flush=True)


def bench_s4(hub, workdir):
    location = f"loc-bench-{uuid.uuid4().hex[:6]}"  # a fresh rate-limit budget in Redis
    args = ("highlevel", "--orders", "150", "--tickets-per-order", "3", "--products", "5", "--location-id", location)
    print("S4 HighLevel: 150 orders -> 450 tickets, 200 ms per request, limit 100 requests / 10 s")
    sim = Simulator(*args, latency=0.2)
    try:
        elapsed, counters = hub.sync("highlevel", {"base_url": sim.url, "location_id": location},
                                     {"token": "pit-sim-token"})
        stats = _stats(sim)
    finally:
        sim.stop()
    made = stats["total_requests"]
    bound = rate_bound(made, 100, 10.0, 0.2)
    print(f"  requests {made}, rate-limit violations {stats['violations']}, "
          f"records {counters['created']} (orders and tickets)")
    _row("engine, full sync", elapsed)
    _row("lower bound (rate limit, latency)", bound, f"engine/bound {elapsed / bound:.2f} (target <= 1.20)")
    sim = Simulator(*args, latency=0.2)
    try:
        baseline = s4_sequential_baseline(sim.url, location, os.path.join(workdir, "s4-baseline.db"))
    finally:
        sim.stop()
    _row("baseline, one at a time (same run)", baseline, f"baseline/engine {baseline / elapsed:.1f}x")
    _row("seed's reported time", SEED_S4_SECONDS, f"seed/engine {SEED_S4_SECONDS / elapsed:.1f}x")


def s4_sequential_baseline(url, location, path):
    """The seed's loop: each order's details, then each ticket inserted and committed alone."""
    session = requests.Session()
    session.headers.update({"Authorization": "Bearer pit-sim-token", "Version": "2021-07-28"})
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS tickets (id TEXT PRIMARY KEY, order_id TEXT, ticket_type TEXT)")
    started = time.perf_counter()
    products = session.get(f"{url}/products/", params={"locationId": location, "limit": 100}).json()["products"]
    valid = {p["_id"] for p in products if p.get("availableInStore")}
    offset, ids = 0, []
    while True:
        body = session.get(f"{url}/payments/orders", params={"altId": location, "altType": "location",
                                                             "limit": 100, "offset": offset}).json()
        ids += [o["_id"] for o in body["data"]]
        offset += len(body["data"])
        if offset >= body["totalCount"] or not body["data"]:
            break
    for order_id in ids:
        order = session.get(f"{url}/payments/orders/{order_id}", params={"altId": location}).json()
        db.execute("DELETE FROM tickets WHERE order_id = ?", (order_id,))
        for item in order["items"]:
            if item["product"]["_id"] in valid:
                for n in range(1, item["qty"] + 1):
                    db.execute("INSERT INTO tickets VALUES (?, ?, ?)",
                               (f"{order_id}:{item['product']['_id']}:{n}", order_id, item["name"]))
                    db.commit()
    return time.perf_counter() - started


def bench_halopsa(hub):
    print("\nHaloPSA: full sync of 20,000 tickets, 100 ms per request, limit ~500 requests / 180 s")
    sim = Simulator("halopsa", "--tickets", "20000", "--agents", "25", latency=0.1)
    try:
        elapsed, counters = hub.sync("halopsa", {"base_url": sim.url, "rate_limit_key": f"halo-{uuid.uuid4().hex}"},
                                     {"client_id": "halo-client", "client_secret": "halo-client-secret"})
        stats = _stats(sim)
        baseline = halo_sequential_baseline(sim.url)
    finally:
        sim.stop()
    made = stats["total_requests"]
    bound = max(rate_bound(made, 500, 180.0, 0.1), 3 * 0.1)  # token -> first page -> the other pages
    print(f"  requests {made}, rate-limit violations {stats['violations']}, records {counters['created']}")
    _row("engine, full sync", elapsed, f"{counters['created'] / elapsed:,.0f} records/s")
    _row("lower bound (rate limit, latency)", bound, f"engine/bound {elapsed / bound:.1f}")
    pages = stats["requests"].get("GET /api/Tickets", 0)
    floor = (2 + math.ceil(max(0, pages - 1) / PAGE_CONCURRENCY)) * 0.1
    _row(f"latency floor, {PAGE_CONCURRENCY} pages in flight", floor, f"engine/floor {elapsed / floor:.2f}")
    _row("baseline, bare sequential paging", baseline, f"baseline/engine {baseline / elapsed:.1f}x (no database)")


def halo_sequential_baseline(url):
    session = requests.Session()
    token = session.post(f"{url}/auth/token", data={"grant_type": "client_credentials", "client_id": "halo-client",
                                                    "client_secret": "halo-client-secret", "scope": "all"}).json()
    session.headers["Authorization"] = f"Bearer {token['access_token']}"
    started, page, seen = time.perf_counter(), 1, 0
    while True:
        body = session.get(f"{url}/api/Tickets", params={"pageinate": "true", "page_size": 100, "page_no": page}).json()
        seen += len(body["tickets"])
        if len(body["tickets"]) < 100:
            break
        page += 1
    assert seen == 20000
    return time.perf_counter() - started


def bench_zoom(hub):
    print("\nZoom: 10,000 webinars, 100 ms per request, pages of 300, list webinars 20 requests/s")
    sim = Simulator("zoom", "--webinars", "10000", "--registrants", "0", "--participants", "0", latency=0.1)
    credentials = {"account_id": "zoom-account", "client_id": "zoom-client", "client_secret": "zoom-client-secret"}
    try:
        elapsed, counters = hub.sync("zoom", {"base_url": sim.url + "/v2", "token_url": sim.url + "/oauth/token",
                                              "rate_limit_key": f"zoom-{uuid.uuid4().hex}"}, credentials,
                                     streams=["webinars"])
        stats = _stats(sim)
        baseline = zoom_sequential_baseline(sim.url)
    finally:
        sim.stop()
    made = stats["total_requests"]
    pages = stats["requests"].get("GET /users/{userId}/webinars", 0)
    bound = max(rate_bound(pages, 20, 1.0, 0.1), (pages + 1) * 0.1)  # each page waits for the one before
    print(f"  requests {made}, rate-limit violations {stats['violations']}, records {counters['created']}")
    _row("engine, full sync", elapsed, f"{counters['created'] / elapsed:,.0f} records/s")
    _row("lower bound (token chain, rate limit)", bound, f"engine/bound {elapsed / bound:.2f}")
    _row("baseline, bare sequential paging", baseline, f"baseline/engine {baseline / elapsed:.2f}x (no database)")


def bench_zoom_children(hub, webinars=300):
    """Issue 19's figure: a full sync with registrants and participants, every request
    category at 20/s, 100 ms per request; the bound is the total requests at 20/s (the streams
    are read one after the other, each its own category's window)."""
    print(f"\nZoom with child streams: {webinars} webinars, their registrants and participants, 100 ms per "
          "request, every category 20 requests/s")
    sim = Simulator("zoom", "--webinars", str(webinars), "--registrants", "3", "--participants", "3",
                    "--rate-limit", "20/1", latency=0.1)
    credentials = {"account_id": "zoom-account", "client_id": "zoom-client", "client_secret": "zoom-client-secret"}
    # Our limiter keeps a margin over the provider's window, as a real deployment does.
    limits = {category: [20, 1.05] for category in ("light", "medium", "heavy")}
    try:
        elapsed, counters = hub.sync("zoom", {"base_url": sim.url + "/v2", "token_url": sim.url + "/oauth/token",
                                              "rate_limits": limits, "rate_limit_key": f"zoom-{uuid.uuid4().hex}"},
                                     credentials)
        stats = _stats(sim)
    finally:
        sim.stop()
    made = stats["total_requests"]
    by_route = stats["requests"]
    bound = rate_bound(made, 20, 1.0, 0.1)
    print(f"  requests {made} ({', '.join(f'{route} {n}' for route, n in sorted(by_route.items()))}), "
          f"rate-limit violations {stats['violations']}, records {counters['created']}")
    _row("engine, full sync with child streams", elapsed, f"{counters['created'] / elapsed:,.0f} records/s")
    _row("lower bound (all requests at 20/s)", bound, f"engine/bound {elapsed / bound:.2f} (target <= 1.20)")


def zoom_sequential_baseline(url):
    session = requests.Session()
    token = session.post(f"{url}/oauth/token", auth=("zoom-client", "zoom-client-secret"),
                         data={"grant_type": "account_credentials", "account_id": "zoom-account"}).json()
    session.headers["Authorization"] = f"Bearer {token['access_token']}"
    started, token, seen = time.perf_counter(), None, 0
    while True:
        params = {"page_size": 300, **({"next_page_token": token} if token else {})}
        body = session.get(f"{url}/v2/users/me/webinars", params=params).json()
        seen += len(body["webinars"])
        token = body["next_page_token"]
        if not token:
            break
    assert seen == 10000
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="s4,halopsa,zoom,zoom_children")
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    from tests.support import RedisServer

    redis_server = RedisServer().start()
    workdir = tempfile.mkdtemp(prefix="synchub-bench-")
    hub = Hub(args.backend, workdir, redis_server.url)
    print(f"database: {args.backend}; each figure next to its bound and a baseline from this run\n")
    try:
        chosen = args.only.split(",")
        if "s4" in chosen:
            bench_s4(hub, workdir)
        if "halopsa" in chosen:
            bench_halopsa(hub)
        if "zoom" in chosen:
            bench_zoom(hub)
        if "zoom_children" in chosen:
            bench_zoom_children(hub)
    finally:
        hub.close()
        redis_server.stop()


if __name__ == "__main__":
    main()
