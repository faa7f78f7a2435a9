"""Helpers for the outbox tests: the S1 mapping exactly as documented, a Loops destination
served by the simulator, worker processes started with outbox settings (and, for tests
that kill one between send and record, a pause there), and a stand-in for the
supervisor's periodic drain."""
import json
import os
from datetime import timedelta
import subprocess
import sys
import time

import pytest

from tests.simulators.harness import SimulatorServer
from tests.simulators.loops import LoopsAPI
from tests.support import ROOT, WorkerProcess, process_env
from tests.worker.pausing_outbox_worker import PAUSE_VARIABLE

with open(os.path.join(ROOT, "docs", "examples", "loops_s1_mappings.json")) as _f:
    S1_MAPPINGS = json.load(_f)

API_KEY = "loops-test-key"

# Small numbers so retries, leases and the breaker play out in a second or two.
FAST = {
    "OUTBOX_LEASE_SECONDS": 2.0,
    "OUTBOX_BACKOFF_BASE_SECONDS": 0.1,
    "OUTBOX_BACKOFF_MAX_SECONDS": 0.4,
    "OUTBOX_BREAKER_THRESHOLD": 5,
    "OUTBOX_BREAKER_COOLDOWN_SECONDS": 0.3,
    "OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS": 1.0,
    "OUTBOX_DRAIN_BUDGET_SECONDS": 5.0,
    "OUTBOX_HTTP_TIMEOUT_SECONDS": 5.0,
}


NOMINATION = {
    "nominator": {"email": "alice@example.com", "first_name": "Alice"},
    "nominee": {"email": "bob@example.com", "name": "Bob Stone"},
    "live_url": "https://awards.example/bob",
}


@pytest.fixture
def fast(app):
    """FAST in the test's app (in-process drains)."""
    app.config.update(FAST)


def outbox_rows():
    """Every outbox row, oldest first, in a fresh snapshot."""
    from sqlalchemy import select

    from webapp.extensions import db
    from webapp.models import OutboxEvent

    db.session.rollback()
    return db.session.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars().all()


def vote(voter, idempotency_key=None):
    """Publish a vote_cast event for <voter>@example.com (uncommitted)."""
    from webapp import outbox
    from webapp.extensions import db

    return outbox.publish(db.session, "vote_cast", f"vote-{voter}", {"voter": {"email": f"{voter}@example.com"}},
                          idempotency_key=idempotency_key)


def worker_env(**overrides):
    """FAST (plus overrides) as the environment variables a worker process reads."""
    settings = dict(FAST, **overrides)
    return {f"SYNCHUB_{name}": str(value) for name, value in settings.items()}


class Loops:
    """A Loops simulator on a real socket that can be stopped and started again on the same
    port (the destination going down and coming back), keeping its state."""

    def __init__(self, api=None):
        self.api = api or LoopsAPI()
        self.server = SimulatorServer(self.api).start()
        self.port = self.server.port
        self.url = self.server.url

    def stop(self):
        if self.server is not None:
            self.server.stop()
            self.server = None

    def start(self):
        if self.server is None:
            self.server = SimulatorServer(self.api, port=self.port).start()
        return self

    @property
    def log(self):
        return self.server.log


@pytest.fixture
def loops():
    sim = Loops()
    yield sim
    sim.stop()


def make_due(*event_ids):
    """What the passing of a backoff does: the rows' next attempt is now. Tests move time
    this way instead of sleeping through a window a busy machine could overshoot."""
    from sqlalchemy import update

    from webapp.extensions import db
    from webapp.models import OutboxEvent, utcnow

    query = update(OutboxEvent).values(next_attempt_at=utcnow() - timedelta(seconds=1))
    if event_ids:
        query = query.where(OutboxEvent.id.in_(event_ids))
    db.session.execute(query)
    db.session.commit()


def end_breaker_cooldown(redis, destination):
    """What the passing of a breaker's cooldown does: it may be probed now."""
    from webapp import redis_keys

    redis.hset(redis_keys.key("outbox", "breaker", destination), "open_until", time.time() - 1)


def loops_connection(make_connection, sim, *, name="loops", mappings=None, **settings):
    return make_connection(name=name, connector="loops",
                           settings={"base_url": sim.url + "/api", "mappings": mappings or S1_MAPPINGS, **settings},
                           credentials={"api_key": API_KEY})


class ConfiguredWorker(WorkerProcess):
    """A real `python -m worker` process with extra environment (outbox settings).
    `pause_after_send` (seconds): its sender waits that long between the destination's
    acceptance and recording it (tests/worker/pausing_outbox_worker.py)."""

    def __init__(self, app, env=None, queues=None, pause_after_send=None, **kwargs):
        super().__init__(app, **kwargs)
        self.env = env or {}
        self.queues = queues
        self.pause_after_send = pause_after_send

    def start(self):
        env = dict(self.env)
        module = "worker"
        if self.pause_after_send:
            module = "tests.worker.pausing_outbox_worker"
            env[PAUSE_VARIABLE] = str(self.pause_after_send)
        args = [sys.executable, "-m", module, "--name", self.name] + (["--burst"] if self.burst else [])
        if self.queues:
            args += ["--queues", self.queues]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=process_env(self.app, **env), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self


@pytest.fixture
def outbox_workers(app):
    """outbox_workers.start(env=worker_env(...), pause_after_send=None, ...) starts a real
    worker; all killed at teardown."""
    started = []

    class Workers:
        def start(self, env=None, **kwargs):
            worker = ConfiguredWorker(app, env if env is not None else worker_env(), **kwargs).start()
            started.append(worker)
            return worker

    yield Workers()
    for worker in started:
        worker.kill()


def status_counts():
    from webapp.extensions import db
    from webapp.outbox import queries

    db.session.rollback()  # a fresh snapshot
    return queries.counts(db.session)


def drain_until(predicate, timeout=60, interval=0.3, message="the outbox to drain"):
    """Enqueue drain jobs the way the supervisor does (a periodic tick) until predicate()."""
    from webapp import outbox

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; outbox {status_counts()}; "
                                 f"dead: {_dead_reasons()}")
        outbox.enqueue_drain()
        time.sleep(interval)


def _dead_reasons():
    from webapp.extensions import db
    from webapp.outbox import DEAD, queries

    return [(row.id, row.attempts, row.last_error) for row in queries.list_events(db.session, status=DEAD)]
