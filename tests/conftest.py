"""Fixtures. Every database test runs on SQLite, and also on PostgreSQL when
SYNCHUB_TEST_POSTGRES_URL is set (CI sets it). Redis is real: REDIS_URL_FOR_TESTS when
set (CI: the server on 127.0.0.1:6379), else a bundled redis-server for the session."""
import os
import tempfile

import pytest
import redis as redis_lib
from sqlalchemy import text

from tests.support import TEST_KEY, Database, RedisServer, WorkerProcess, cleanup_dir

BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("SYNCHUB_TEST_POSTGRES_URL") else [])
if os.environ.get("CI") == "true" and "postgresql" not in BACKENDS:
    raise RuntimeError("CI=true but SYNCHUB_TEST_POSTGRES_URL is unset: CI must exercise PostgreSQL")

# For tests whose subject is processes, not SQL (CLI subprocesses, supervisors, many
# workers): one database is enough, PostgreSQL when there is one. Keeps the suite short.
one_backend = pytest.mark.parametrize("app", BACKENDS[-1:], indirect=True)

TABLES = ("run_events", "records", "stream_states", "run_rollups", "runs", "webhook_deliveries", "outbox_events", "connection_issues",
          "connections", "users", "api_tokens", "supervisors", "alerts")


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("REDIS_URL_FOR_TESTS")
    if url:
        redis_lib.Redis.from_url(url).ping()  # CI: fail loudly if the real server is down
        claimed, release = _claim_database(url)
        if claimed is None:
            pytest.fail(f"every Redis database 1-15 of {url} is in use by another test session")
        yield claimed
        redis_lib.Redis.from_url(claimed).flushdb()
        release()
        return
    server = RedisServer().start()
    yield server.url
    server.stop()


def _claim_database(url):
    """The URL of a Redis database (1-15) no other test session is using, claimed for this
    one: every test flushes its database, so two sessions sharing one (two pytest-xdist
    workers, or a developer's run beside CI's) would wipe each other's queues and locks.
    Claims live in database 0, which no session flushes; one expires after two hours, so a
    killed session's database comes free again. Returns (url, release) or (None, None)."""
    base = url.split("?")[0].rstrip("/")
    head, _, last = base.rpartition("/")
    if last.isdigit() and head.count("/") >= 2:
        base = head
    registry = redis_lib.Redis.from_url(f"{base}/0")
    owner = f"{os.getpid()}@{os.uname().nodename}"
    for index in range(1, 16):
        claim = f"synchub-tests:redis-db-claimed:{index}"
        if registry.set(claim, owner, nx=True, ex=7200):
            return f"{base}/{index}", lambda: registry.delete(claim)
    return None, None


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of a minute or more (the chaos and soak runs); scheduled first")


def pytest_collection_modifyitems(items):
    """The longest tests first (marked `slow`), so with `-n 2` they run beside the rest
    instead of alone at the end."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)


@pytest.fixture(scope="session")
def _databases():
    workdir = tempfile.mkdtemp(prefix="synchub-db-", dir="/tmp")
    created = {}
    yield workdir, created
    for database in created.values():
        database.drop()
    cleanup_dir(workdir)


def make_app(database_url, redis_url, instance_path, **overrides):
    from webapp import create_app

    os.environ["SYNCHUB_INSTANCE_PATH"] = instance_path
    config = {
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "REDIS_URL": redis_url,
        "SYNCHUB_ENCRYPTION_KEYS": TEST_KEY,
        "HEARTBEAT_SECONDS": 0.2,
        "STALE_AFTER_SECONDS": 2.0,
        "RUN_MAX_ATTEMPTS": 3,
        "HTTP_BACKOFF_BASE_SECONDS": 0.05,
        "HTTP_BACKOFF_MAX_SECONDS": 0.5,
        # Retries come back at once unless a test is about the pause between attempts
        # (tests/webapp/test_runs_waiting.py, tests/worker/test_run_waiting.py set it).
        "RUN_RETRY_BASE_SECONDS": 0.0,
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture(params=BACKENDS)
def app(request, _databases, redis_url, tmp_path_factory):
    workdir, created = _databases
    backend = request.param
    first = backend not in created
    if first:
        created[backend] = Database(backend, workdir)
    database = created[backend]
    instance = str(tmp_path_factory.mktemp("instance"))
    application = make_app(database.url, redis_url, instance)
    with application.app_context():
        from flask_migrate import upgrade

        from webapp.extensions import db

        if first:
            upgrade()
        else:
            with db.engine.begin() as conn:
                for table in TABLES:
                    conn.execute(text(f"DELETE FROM {table}"))
        redis_lib.Redis.from_url(redis_url).flushdb()
        yield application
        db.session.remove()
        db.engine.dispose()
        from webapp.webhooks.delivery_writer import dispose

        dispose(application)


@pytest.fixture
def redis(app):
    from webapp.extensions import redis_ext

    return redis_ext.client


@pytest.fixture
def workers(app):
    """Start real worker processes with workers.start(); all are killed at teardown."""
    started = []

    class Workers:
        def start(self, **kwargs):
            worker = WorkerProcess(app, **kwargs).start()
            started.append(worker)
            return worker

    yield Workers()
    for worker in started:
        worker.kill()


@pytest.fixture
def make_connection(app):
    from webapp.extensions import db
    from webapp.models import Connection

    def make(name="demo", connector="sandbox", settings=None, credentials=None, schedule="manual", enabled=True):
        conn = Connection(name=name, connector=connector, settings=settings or {}, schedule=schedule, enabled=enabled)
        conn.credentials = credentials or {}
        db.session.add(conn)
        db.session.commit()
        return conn

    return make


@pytest.fixture
def serve():
    """serve(wsgi_app) -> a started SimulatorServer on 127.0.0.1 (a provider fake, or the hub
    itself), stopped after the test."""
    from tests.simulators.harness import SimulatorServer

    servers = []

    def start(wsgi_app):
        server = SimulatorServer(wsgi_app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
