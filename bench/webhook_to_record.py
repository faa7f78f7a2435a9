"""Webhook -> record stored, end to end (issue 20, item 3): N signed webhooks for N distinct
records are sent as fast as a load generator can, to the hub served by gunicorn
(gunicorn.conf.py), with two real `python -m worker` processes (dispatch and record runs);
measured from the first POST to the last record stored, next to the ingest rate of the
same run (webhooks accepted per second) and the provider's rate-limit bound.

    .venv/bin/python -m bench.webhook_to_record [--backend postgresql|sqlite] [--n 2000]
                                                 [--highlevel-n 300] [--only sandbox-0,sandbox-100,highlevel]

Scenarios (a new connection each):
- sandbox-0:   the sandbox connector, no latency (its bulk endpoint, read_records);
- sandbox-100: the sandbox connector, 100 ms per provider call;
- highlevel:   the HighLevel simulator (its own process) with its real limit of 100 requests
               per 10 s per location: one request per order, so the bound is N / 10 per s.

Target: end-to-end rate >= 0.5x the ingest rate where the rate limit allows; where it does
not, >= 0.8x the rate-limit bound (the rate the provider lets us reach).
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

import requests

from bench.common import ROOT, Simulator, ThrowawayDatabase
from bench.webhook_ingest import prepare, serve, stop
from tests.support import TEST_KEY, RedisServer

SENDER_THREADS = 32
HIGHLEVEL_LIMIT = (100, 10.0)


def standard_requests(secret, ids):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    ts = str(int(time.time()))
    out = []
    for n, record_id in enumerate(ids):
        body = json.dumps({"type": "item.updated", "data": {"id": record_id}}, separators=(",", ":")).encode()
        msg_id = f"msg_{record_id}_{n}"
        digest = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        out.append((body, {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": ts,
                           "webhook-signature": "v1," + base64.b64encode(digest).decode()}))
    return out


def send_all(url, prepared):
    """POST every prepared (body, headers) from SENDER_THREADS threads; returns (first POST
    epoch, last answer epoch, statuses)."""
    statuses, lock, position = {}, threading.Lock(), iter(range(len(prepared)))

    def sender():
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(position, None)
                if i is None:
                    return
                body, headers = prepared[i]
                try:
                    status = session.post(url, data=body, headers=headers, timeout=30).status_code
                except requests.RequestException:
                    status = "error"
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=sender) for _ in range(SENDER_THREADS)]
    first = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return first, time.time(), statuses


def add_connection(app, name, connector, settings, credentials):
    from webapp.extensions import db
    from webapp.models import Connection

    with app.app_context():
        connection = Connection(name=name, connector=connector,
                                settings={"allowed_triggers": ["manual", "webhook", "api"], **settings})
        connection.credentials = credentials
        db.session.add(connection)
        db.session.commit()
        return connection.id


def wait_stored(app, connection_id, stream, expected, timeout):
    """(epoch of the last record stored, stored count, record runs) once `expected` are stored."""
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import Record, Run

    deadline = time.monotonic() + timeout
    with app.app_context():
        while True:
            count = db.session.scalar(select(func.count()).select_from(Record).where(
                Record.connection_id == connection_id, Record.stream == stream))
            db.session.rollback()
            if count >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        last = db.session.scalar(select(func.max(Record.first_seen_at)).where(
            Record.connection_id == connection_id, Record.stream == stream))
        record_runs = db.session.scalar(select(func.count()).select_from(Run).where(
            Run.connection_id == connection_id, Run.mode == "record"))
    epoch = last.replace(tzinfo=timezone.utc).timestamp() if last else None
    return epoch, count, record_runs


def start_workers(workdir, database_url, redis_url, count=2):
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, SYNCHUB_INSTANCE_PATH=workdir,
               SYNCHUB_ENCRYPTION_KEYS=TEST_KEY, SYNCHUB_LOG_LEVEL="WARNING", PYTHONPATH=ROOT)
    return [subprocess.Popen([sys.executable, "-m", "worker", "--name", f"bench-worker-{n}"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            for n in range(count)]


def warm_up(app, hub_url, secret, timeout=120):
    """Both workers listening and one webhook through to its record (the connection
    `shop` of bench.webhook_ingest.prepare), so no scenario pays for start-up."""
    from rq import Worker
    from sqlalchemy import func, select

    from webapp.extensions import db, redis_ext
    from webapp.models import Record

    deadline = time.monotonic() + timeout
    with app.app_context():
        while len(Worker.all(connection=redis_ext.client)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.2)
        send_all(f"{hub_url}/webhooks/shop", standard_requests(secret, ["item-0000001"]))
        while not db.session.scalar(select(func.count()).select_from(Record)):
            db.session.rollback()
            if time.monotonic() > deadline:
                raise RuntimeError("the warm-up webhook's record was not stored")
            time.sleep(0.2)


def scenario(app, hub_url, name, connector, settings, credentials, prepared, stream, expected, limit_rate, timeout):
    connection_id = add_connection(app, name, connector, settings, credentials)
    first, answered, statuses = send_all(f"{hub_url}/webhooks/{name}", prepared)
    last, stored, record_runs = wait_stored(app, connection_id, stream, expected, timeout)
    n = len(prepared)
    ingest = n / max(answered - first, 1e-6)
    seconds = (last - first) if last else float("inf")
    end_to_end = stored / seconds if seconds > 0 else 0.0
    bound = n / limit_rate if limit_rate else None
    # What the provider lets us reach is the lower of the two rates.
    reachable = min(ingest, limit_rate) if limit_rate else ingest
    target = 0.8 if limit_rate and limit_rate < ingest else 0.5
    return {"scenario": name, "n": n, "stored": stored, "expected": expected, "record_runs": record_runs,
            "statuses": statuses, "ingest_rate": ingest, "seconds": seconds, "end_to_end_rate": end_to_end,
            "bound_seconds": bound, "reachable": reachable, "ratio": end_to_end / reachable, "target": target}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--n", type=int, default=2000, help="webhooks per sandbox scenario")
    parser.add_argument("--highlevel-n", type=int, default=400, help="webhooks (orders) in the HighLevel scenario")
    parser.add_argument("--only", default="sandbox-0,sandbox-100,highlevel")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    args = parser.parse_args()
    only = args.only.split(",")

    workdir = tempfile.mkdtemp(prefix="synchub-bench-w2r-")
    database = ThrowawayDatabase(args.backend, workdir)
    redis_server = RedisServer().start()
    procs, simulator, results = [], None, []
    try:
        app, secret = prepare(workdir, database.url, redis_server.url)
        hub_proc, hub_url = serve("wsgi:app", workdir, database.url, redis_server.url, args.web_workers, args.threads)
        procs.append(hub_proc)
        procs += start_workers(workdir, database.url, redis_server.url)
        warm_up(app, hub_url, secret)
        for latency in (0, 100):
            name = f"sandbox-{latency}"
            if name not in only:
                continue
            ids = [f"item-{n:07d}" for n in range(args.n)]
            results.append(scenario(app, hub_url, name, "sandbox", {"records": args.n, "latency_ms": latency},
                                    {"webhook_secret": secret}, standard_requests(secret, ids), "items", args.n,
                                    None, timeout=600))
        if "highlevel" in only:
            from tests.simulators.highlevel import HighLevelAPI

            n = args.highlevel_n
            simulator = Simulator("highlevel", "--orders", str(n), "--products", "5", "--seed", "5",
                                  "--rate-limit", f"{HIGHLEVEL_LIMIT[0]}/{HIGHLEVEL_LIMIT[1]:g}")
            # The same seed makes the same orders and signing key here, to sign its webhooks.
            api = HighLevelAPI(n, 5, seed=5, rate_limit=HIGHLEVEL_LIMIT)
            orders = list(api.expected_tickets())  # the orders the hub syncs (a valid product each)
            prepared = []
            for order_id in orders:
                body = api.webhook_body("OrderCreate", order_id)
                prepared.append((body, {"Content-Type": "application/json", **api.sign(body)}))
            results.append(scenario(app, hub_url, "highlevel", "highlevel",
                                    {"base_url": simulator.url, "location_id": api.location_id,
                                     "webhook_public_key": api.public_key_pem},
                                    {"token": "pit-sim-token"}, prepared, "orders", len(orders),
                                    HIGHLEVEL_LIMIT[0] / HIGHLEVEL_LIMIT[1], timeout=900))
    finally:
        if simulator:
            simulator.stop()
        for proc in procs:
            stop(proc)
        redis_server.stop()
        database.drop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"webhook -> record stored, end to end ({args.backend}, gunicorn gthread {args.web_workers}x{args.threads}, "
          f"2 workers, {SENDER_THREADS} sender threads, load avg at end {os.getloadavg()[0]:.1f}, "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)")
    for r in results:
        bound = f"{r['bound_seconds']:.1f} s" if r["bound_seconds"] else "none"
        print(f"  {r['scenario']:<12} n {r['n']}  stored {r['stored']}/{r['expected']} in {r['record_runs']} record runs; "
              f"ingest {r['ingest_rate']:.0f}/s; end to end {r['end_to_end_rate']:.1f}/s in {r['seconds']:.1f} s; "
              f"rate-limit bound {bound}; ratio {r['ratio']:.2f} of {r['reachable']:.0f}/s "
              f"(target >= {r['target']:g}); answers {r['statuses']}")
    if any(r["stored"] < r["expected"] for r in results):
        sys.exit("some records were not stored")


if __name__ == "__main__":
    main()
