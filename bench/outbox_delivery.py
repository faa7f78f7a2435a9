"""Outbox events sent to the Loops simulator: events/s by real worker processes next to a bare
loop of the same HTTP calls in the same run, and the drain rate against the rate-limited
simulator as a fraction of its limit.

    .venv/bin/python -m bench.outbox_delivery [--events 2000] [--workers 1,4]
                                              [--backends sqlite,postgresql] [--limited-events 150]

The simulator runs in its own process (`python -m tests.simulators loops`), without added
latency. Events are published first (one upsert_contact row each, 200 contacts, committed
200 at a time); then the workers are started, and once they are idle one drain job per
worker is queued. Timing runs from that moment until the last row is `done`.

Baseline: the same PUT /api/v1/contacts/update requests (same bodies, Bearer key,
Idempotency-Key) sent by a bare `requests.Session` loop in this process, one at a time,
measured once at the start and again right before and right after each row's drain (its
`bare/s` is the mean of those two, which the row's ratio divides by): on a shared machine
the bare rate swings 2-4x within minutes. `start s`
is how long after the drain jobs were queued the first event was delivered (job pickup,
the work horse's fork, its first claim).

Rate-limited: the simulator enforces Loops' 10 requests/s per team (sliding one-second
window, 429 beyond) and 4 workers drain through the shared Redis limiter. The steady rate
is (events - 10) / (last sent - first sent): the first 10 go out at once (a full
window's budget), after which the limiter holds the pace.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import requests

from bench.common import ROOT, Simulator, ThrowawayDatabase

API_KEY = "loops-test-key"
CONTACTS = 200


def _env(db_url, redis_url, instance, key):
    return dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, SYNCHUB_INSTANCE_PATH=instance,
                SYNCHUB_ENCRYPTION_KEYS=key, SYNCHUB_LOG_LEVEL="WARNING", PYTHONPATH=ROOT,
                SYNCHUB_OUTBOX_DRAIN_BUDGET_SECONDS="600")


def _body(n):
    return {"email": f"contact{n % CONTACTS}@example.com", "score": n}


def bare_loop(url, events):
    session = requests.Session()
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": ""}
    started = time.perf_counter()
    for n in range(events):
        headers["Idempotency-Key"] = f"bare-{n}"
        response = session.put(url + "/api/v1/contacts/update", json=_body(n), headers=headers, timeout=30)
        assert response.status_code == 200, response.text
    return events / (time.perf_counter() - started)


class Bench:
    def __init__(self, backend, redis_url, instance):
        from cryptography.fernet import Fernet

        self.database = ThrowawayDatabase(backend, instance)
        self.env = _env(self.database.url, redis_url, instance, Fernet.generate_key().decode())
        os.environ.update({k: self.env[k] for k in ("SYNCHUB_INSTANCE_PATH", "SYNCHUB_ENCRYPTION_KEYS")})
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=self.env,
                       check=True, capture_output=True)
        from webapp import create_app

        self.app = create_app({"SQLALCHEMY_DATABASE_URI": self.database.url, "REDIS_URL": redis_url,
                               "SYNCHUB_ENCRYPTION_KEYS": self.env["SYNCHUB_ENCRYPTION_KEYS"]})

    def close(self):
        with self.app.app_context():
            from webapp.extensions import db

            db.session.remove()
            db.engine.dispose()
        self.database.drop()

    def prepare(self, sim_url, events, rate_limit=None):
        """A fresh loops connection and `events` published rows; nothing queued."""
        from sqlalchemy import text

        from webapp import outbox
        from webapp.extensions import db, redis_ext
        from webapp.models import Connection

        with self.app.app_context():
            db.session.execute(text("DELETE FROM outbox_events"))
            db.session.execute(text("DELETE FROM connections"))
            db.session.commit()
            settings = {"base_url": sim_url + "/api", "mappings": {"score_changed": [
                {"action": "upsert_contact", "email": "{email}", "properties": {"score": "{score}"}}]}}
            if rate_limit:
                settings["rate_limit"] = rate_limit
            conn = Connection(name="loops", connector="loops", settings=settings)
            conn.credentials = {"api_key": API_KEY}
            db.session.add(conn)
            db.session.commit()
            started = time.perf_counter()
            for n in range(events):
                outbox.publish(db.session, "score_changed", f"s{n}", _body(n), idempotency_key=f"s{n}")
                if n % 200 == 199:
                    db.session.commit()
            db.session.commit()
            published = events / (time.perf_counter() - started)
            redis_ext.client.flushdb()  # the real-time job the commits queued: the drains below do it all
            return published

    def drain(self, workers):
        """Start `workers` processes, wait until idle, queue one drain each, time until all done."""
        from rq import Queue, Worker
        from sqlalchemy import func, select

        from webapp.extensions import db, redis_ext
        from webapp.models import OutboxEvent, utcnow
        from webapp.queue import queue_name

        with self.app.app_context():
            client = redis_ext.client
            procs = [subprocess.Popen([sys.executable, "-m", "worker", "--name", f"bench-{i}-{time.time_ns()}"],
                                      cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for i in range(workers)]
            try:
                deadline = time.monotonic() + 60
                while len(Worker.all(connection=client)) < workers:
                    if time.monotonic() > deadline:
                        raise RuntimeError("workers did not start")
                    time.sleep(0.1)
                total = db.session.scalar(select(func.count()).select_from(OutboxEvent))
                started, queued_at = time.perf_counter(), utcnow()
                give_up = time.monotonic() + 600
                for _ in range(workers):
                    Queue(queue_name("default"), connection=client).enqueue_call("worker.jobs.send_due_outbox_events", timeout=900)
                while True:
                    db.session.rollback()
                    done = db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                             .where(OutboxEvent.status == "done"))
                    if done == total:
                        break
                    if time.monotonic() > give_up:
                        raise RuntimeError(f"only {done} of {total} sent after 600 s")
                    time.sleep(0.05)
                seconds = time.perf_counter() - started
                first, last = db.session.execute(select(func.min(OutboxEvent.delivered_at),
                                                        func.max(OutboxEvent.delivered_at))).one()
                retried = db.session.scalar(select(func.count()).select_from(OutboxEvent)
                                            .where(OutboxEvent.attempts > 1))
                self.start_seconds = (first - queued_at).total_seconds()
                return total, seconds, (last - first).total_seconds(), retried
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
                client.flushdb()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--limited-events", type=int, default=150)
    args = parser.parse_args()

    from tests.support import RedisServer

    redis_server = RedisServer().start()
    fast = Simulator("loops", "--rate-limit", "none")
    limited = Simulator("loops", "--rate-limit", "10/1")
    instance = tempfile.mkdtemp(prefix="bench-outbox-")
    try:
        bare = bare_loop(fast.url, args.events)
        print(f"zero-latency Loops simulator, {args.events} events, {CONTACTS} contacts")
        print(f"bare requests loop (1 thread): {bare:,.0f} requests/s\n")
        print(f"{'backend':<11}{'workers':>8}{'publish/s':>11}{'events/s':>10}{'bare/s':>8}{'vs bare':>9}"
              f"{'start s':>9}{'retried':>9}")
        for backend in args.backends.split(","):
            bench = Bench(backend, redis_server.url, instance)
            try:
                for workers in (int(w) for w in args.workers.split(",")):
                    published = bench.prepare(fast.url, args.events, rate_limit=[1_000_000, 1])
                    bare_before = bare_loop(fast.url, args.events)
                    total, seconds, _, retried = bench.drain(workers)
                    bare = (bare_before + bare_loop(fast.url, args.events)) / 2
                    rate = total / seconds
                    print(f"{backend:<11}{workers:>8}{published:>11,.0f}{rate:>10,.0f}{bare:>8,.0f}{rate / bare:>9.2f}"
                          f"{bench.start_seconds:>9.2f}{retried:>9}", flush=True)
                if backend == args.backends.split(",")[-1]:
                    bench.prepare(limited.url, args.limited_events)
                    total, seconds, span, retried = bench.drain(4)
                    stats = requests.get(limited.url + "/_simulator/stats", timeout=10).json()
                    steady = (total - 10) / span
                    print(f"\nrate-limited simulator (10 requests/s per team), {total} events, 4 workers, {backend}:")
                    print(f"steady drain rate {steady:.2f} events/s = {steady / 10:.3f} of the limit (target >= 0.9); "
                          f"overall {total / seconds:.2f}/s including the first full window; "
                          f"429s from the simulator: {stats['violations']} of {stats['requests']} requests; "
                          f"events that needed a second attempt: {retried}")
            finally:
                bench.close()
    finally:
        fast.stop()
        limited.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
