"""The declared ports of Zoom and HaloPSA (webapp/connectors/declared/*.yaml) against the
Python connectors they port: both run through the engine against one simulator, and must
store exactly the same records (every field, deletions too) with the same number of
requests, in full runs, after the provider's data changed, and in incremental or range runs.
Runs on every backend of tests/conftest.py (SQLite, and PostgreSQL in CI)."""
import uuid
from collections import Counter

from sqlalchemy import select

from tests.simulators.halopsa import HaloAPI
from tests.simulators.zoom import ZoomAPI
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, Record, Run
from worker.engine import execute_run

ZOOM_CREDENTIALS = {"account_id": "zoom-account", "client_id": "zoom-client", "client_secret": "zoom-client-secret"}
HALO_CREDENTIALS = {"client_id": "halo-client", "client_secret": "halo-client-secret"}


def _stored(conn):
    rows = db.session.scalars(select(Record).where(Record.connection_id == conn.id)).all()
    return {(r.stream, r.external_id): (r.data, r.deleted_at is not None) for r in rows}


def _sync(conn, redis, server, **kwargs):
    """One run through the engine; (the run, the requests it made by path). A request the
    simulator throttled (429, when admission and arrival drift apart on a busy machine) is
    retried by the shared client: it says nothing about the connector, so it is not counted."""
    server.log.clear()
    run = runs.trigger(conn, enqueue=False, **kwargs).run
    assert execute_run(run.id, redis_client=redis, worker_name="t") == COMPLETED
    db.session.expire_all()
    return db.session.get(Run, run.id), Counter(e.path for e in server.log.entries() if e.status != 429)


def _both(python, declared, redis, server, **kwargs):
    """The Python and the declared connection each run once; both stored the same, the same way."""
    run_p, requests_p = _sync(python, redis, server, **kwargs)
    run_d, requests_d = _sync(declared, redis, server, **kwargs)
    assert requests_d == requests_p  # the same requests, path by path
    assert (run_d.created, run_d.updated, run_d.deleted, run_d.failed) == \
        (run_p.created, run_p.updated, run_p.deleted, run_p.failed)
    stored_p, stored_d = _stored(python), _stored(declared)
    assert stored_d == stored_p
    return run_p, sum(requests_p.values()), stored_p


def test_declared_zoom_stores_what_the_python_connector_stores(app, make_connection, redis, serve):
    zoom = ZoomAPI(webinars=45, seed=5, malformed_every=9, registrants=(0, 4), participants=(0, 3))
    zoom.server = serve(zoom)
    # One account, so one shared budget (a request the simulator refused would be one more).
    settings = {"base_url": zoom.server.url + "/v2", "token_url": zoom.server.url + "/oauth/token", "page_size": 10,
                "rate_limit_key": f"zoom-port:{uuid.uuid4().hex}"}
    python = make_connection(name="zoom-python", connector="zoom", credentials=ZOOM_CREDENTIALS, settings=settings)
    declared = make_connection(name="zoom-declared", connector="zoom_declared", credentials=ZOOM_CREDENTIALS,
                               settings=settings)

    run, requests, stored = _both(python, declared, redis, zoom.server)
    streams = Counter(stream for stream, _ in stored)
    assert run.failed == 5 and streams["webinars"] == 40  # 45 webinars, every 9th malformed
    assert streams["registrants"] > 20 and streams["participants"] > 10 and requests > 60

    zoom.change(ids=zoom.valid_ids()[:6])
    zoom.delete(ids=zoom.valid_ids()[10:13])
    zoom.add(4)
    run, _, stored = _both(python, declared, redis, zoom.server, mode="incremental")
    assert run.updated == 6 and run.deleted >= 3 and run.created >= 4
    assert sum(deleted for _, deleted in stored.values()) >= 3

    run, _, _ = _both(python, declared, redis, zoom.server, mode="full")
    assert (run.created, run.updated, run.deleted) == (0, 0, 0)  # nothing changed since
    _both(python, declared, redis, zoom.server, mode="range", params={"since": "2025-06-01", "until": "2026-01-01"})


def test_declared_halopsa_stores_what_the_python_connector_stores(app, make_connection, redis, serve):
    halo = HaloAPI(tickets=430, agents=4, first_date="2023-07-01", days=1096, malformed_every=37)
    halo.server = serve(halo)
    settings = {"base_url": halo.server.url, "agent_mappings": {"1": "alice@app.example", "3": "carol@app.example"},
                "page_concurrency": 3, "rate_limit_key": f"halo-port:{uuid.uuid4().hex}"}
    python = make_connection(name="halo-python", connector="halopsa", credentials=HALO_CREDENTIALS, settings=settings)
    declared = make_connection(name="halo-declared", connector="halopsa_declared", credentials=HALO_CREDENTIALS,
                               settings=settings)

    run, requests, stored = _both(python, declared, redis, halo.server)
    assert run.failed > 0 and Counter(s for s, _ in stored) == {"tickets": 430 - run.failed, "agents": 4}
    assert requests == 1 + 5 + 1  # token, five ticket pages, agents
    assert {d["app_user"] for (s, _), (d, _) in stored.items() if s == "agents"} == \
        {"alice@app.example", "carol@app.example", None}

    halo.change(list(halo.tickets)[:5])
    halo.delete(list(halo.tickets)[40:48])
    halo.add_tickets(78, start="2026-01-02")  # 500 tickets: the count is a whole number of pages
    run, requests, _ = _both(python, declared, redis, halo.server)
    assert run.deleted == 8 and run.created >= 60 and requests == 1 + 6 + 1  # page 6 comes back empty

    # A window of dates: range on both (the Python connector's incremental is a fiscal-year
    # window, which a declaration does not express; docs/CONNECTORS.md).
    run, _, _ = _both(python, declared, redis, halo.server, mode="range", streams=["tickets"],
                      params={"since": "2024-07-01", "until": "2025-07-01"})
    assert run.deleted == 0
