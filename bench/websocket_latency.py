"""Delay from a worker's progress publish to its receipt by browsers watching over the
websocket, with N watchers on one run, next to a bare Redis pub/sub subscriber's delay for
the same messages, measured in the same run.

    .venv/bin/python -m bench.websocket_latency [--watchers 50] [--messages 200] [--rate 20]

The app runs under gunicorn (gthread, one process, as in the Procfile); the publisher is
webapp.progress.ProgressPublisher, exactly what the worker uses. Each message carries the
publish time (`updated_at`, set just before SET+PUBLISH); a receiver's delay is its clock
at receipt minus that. Watchers and the baseline subscriber share this process, so both
see the same scheduling noise. REDIS_URL selects a Redis; otherwise a bundled one is started.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import redis
import requests
import simple_websocket

from bench.common import ROOT, ThrowawayDatabase, free_port
from tests.support import TEST_KEY, RedisServer
from tests.webapp.admin.support import PASSWORD, csrf_token


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Receiver(threading.Thread):
    def __init__(self, ready):
        super().__init__(daemon=True)
        self.delays = []
        self.ready = ready

    def record(self, payload):
        received = time.time()
        message = json.loads(payload)
        if "bench_seq" in message:
            self.delays.append(received - message["updated_at"])
        return message


class Watcher(Receiver):
    def __init__(self, url, cookie, ready):
        super().__init__(ready)
        self.url, self.cookie = url, cookie
        self.closed = False

    def run(self):
        ws = simple_websocket.Client.connect(self.url, headers={"Cookie": self.cookie})
        ws.receive(timeout=10)  # the snapshot on connect
        self.ready.release()
        try:
            while True:
                data = ws.receive(timeout=30)
                if data is None:
                    return
                self.record(data)
        except simple_websocket.ConnectionClosed:
            self.closed = True


class BareSubscriber(Receiver):
    def __init__(self, redis_url, run_id, ready, pattern):
        super().__init__(ready)
        self.pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(pattern)
        self.run_id = run_id

    def run(self):
        self.ready.release()
        while True:
            message = self.pubsub.get_message(timeout=30)
            if message is None:
                continue
            if self.record(message["data"]).get("status") == "completed":
                return


def prepare(workdir, database_url, redis_url):
    """Migrate, and create an admin, a connection and a running run, as the app would."""
    os.environ["SYNCHUB_INSTANCE_PATH"] = workdir
    from webapp import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "REDIS_URL": redis_url,
                      "SYNCHUB_ENCRYPTION_KEYS": TEST_KEY})
    with app.app_context():
        from flask_migrate import upgrade

        from webapp import runs
        from webapp.admin.auth import create_admin
        from webapp.extensions import db
        from webapp.models import Connection

        upgrade()
        create_admin("bench@example.com", PASSWORD)
        connection = Connection(name="bench", connector="sandbox", settings={})
        db.session.add(connection)
        db.session.commit()
        run = runs.trigger(connection, enqueue=False).run
        assert runs.claim(run.id, "bench") == 1
        return app, run.id


def serve(workdir, database_url, redis_url, threads):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, REDIS_URL=redis_url, SYNCHUB_INSTANCE_PATH=workdir,
               SYNCHUB_ENCRYPTION_KEYS=TEST_KEY, SYNCHUB_LOG_LEVEL="WARNING", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", str(threads),
                             "--workers", "1", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/healthz", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("gunicorn did not start")
        time.sleep(0.2)


def login(url):
    session = requests.Session()
    page = session.get(url + "/admin/login", timeout=10)
    cookie = "; ".join(f"{c.name}={c.value}" for c in page.cookies)
    response = session.post(url + "/admin/login", headers={"Cookie": cookie}, allow_redirects=False, timeout=10,
                            data={"email": "bench@example.com", "password": PASSWORD, "csrf_token": csrf_token(page.text)})
    assert response.status_code == 302, "login failed"
    return "; ".join(f"{c.name}={c.value}" for c in response.cookies)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="publishes per second")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="synchub-bench-ws-")
    redis_server = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        redis_server = RedisServer().start()
        redis_url = redis_server.url
    database = ThrowawayDatabase("sqlite", workdir)
    proc = None
    try:
        app, run_id = prepare(workdir, database.url, redis_url)
        proc, url = serve(workdir, database.url, redis_url, threads=args.watchers + 16)
        cookie = login(url)
        ready = threading.Semaphore(0)
        ws_url = url.replace("http://", "ws://") + f"/admin/runs/{run_id}/live"
        watchers = [Watcher(ws_url, cookie, ready) for _ in range(args.watchers)]
        from webapp.progress import ProgressPublisher, channel_pattern, database_of

        with app.app_context():
            pattern = channel_pattern(database_of(redis.Redis.from_url(redis_url)))
            baseline = BareSubscriber(redis_url, run_id, ready, pattern)
        for receiver in watchers + [baseline]:
            receiver.start()
        for _ in range(len(watchers) + 1):
            if not ready.acquire(timeout=60):
                raise RuntimeError("not every watcher connected")

        with app.app_context():
            publisher = ProgressPublisher(redis.Redis.from_url(redis_url), run_id)
        interval = 1 / args.rate
        started = time.monotonic()
        for i in range(args.messages):
            publisher.add_message(f"page {i}")
            publisher.publish({"status": "running", "phase": "fetching items", "processed": i, "total": args.messages,
                               "percent": round(100 * i / args.messages, 1), "rate": 0, "eta_seconds": None,
                               "counters": {"seen": i}, "bench_seq": i})
            time.sleep(max(0.0, started + (i + 1) * interval - time.monotonic()))
        publisher.publish({"status": "completed", "phase": "done", "processed": args.messages,
                           "total": args.messages, "percent": 100.0, "counters": {"seen": args.messages}})
        for receiver in watchers + [baseline]:
            receiver.join(30)

        ws_delays = [d for w in watchers for d in w.delays]
        expected = args.watchers * args.messages
        closed = sum(w.closed for w in watchers)
        print(f"websocket latency: {args.watchers} watchers on one run, {args.messages} publishes at {args.rate:g}/s "
              f"(gunicorn gthread, 1 process, Redis {redis.Redis.from_url(redis_url).info()['redis_version']})")
        print(f"  received {len(ws_delays)}/{expected} updates; {closed}/{args.watchers} sockets closed by the server "
              "after the final state")
        for p in (50, 99):
            ws_ms = percentile(ws_delays, p) * 1000
            base_ms = percentile(baseline.delays, p) * 1000
            print(f"  p{p}: websocket {ws_ms:7.2f} ms | baseline (bare Redis subscriber) {base_ms:6.2f} ms | "
                  f"ratio {ws_ms / base_ms:5.1f}x")
        print(f"  max: websocket {max(ws_delays) * 1000:7.2f} ms | baseline {max(baseline.delays) * 1000:6.2f} ms")
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if redis_server is not None:
            redis_server.stop()
        database.drop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
