"""Cron endpoints: shared secret in a header (never the query string), idempotent under
concurrent calls."""
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.simulators.harness import SimulatorServer
from webapp.extensions import db
from webapp.models import Run

from .conftest import CRON_SECRET


def test_cron_endpoints_need_the_secret_in_a_header(client, cron, make_connection):
    make_connection(name="halo", schedule="hourly:0")
    for headers in ({}, {"X-Cron-Secret": "wrong"}, {"Authorization": "Bearer wrong"}):
        response = client.post("/api/cron/sync/halo", headers=headers)
        assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"
    assert client.post(f"/api/cron/sync/halo?secret={CRON_SECRET}").status_code == 401
    assert client.post(f"/api/cron/sweep?cron_secret={CRON_SECRET}").status_code == 401
    assert db.session.query(Run).count() == 0
    assert client.post("/api/cron/sync/halo", headers={"Authorization": f"Bearer {CRON_SECRET}"}).status_code == 201


def test_cron_refuses_everything_when_no_secret_is_configured(app, client):
    app.config["CRON_SECRET"] = None
    assert client.post("/api/cron/sweep", headers={"X-Cron-Secret": ""}).status_code == 401
    assert client.post("/api/cron/sweep", headers={"X-Cron-Secret": "None"}).status_code == 401


def test_concurrent_cron_syncs_create_one_run(app, cron, make_connection):
    make_connection(name="halo", schedule="hourly:0")
    with SimulatorServer(app) as server, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: requests.post(f"{server.url}/api/cron/sync/halo", headers=cron, timeout=30),
                                  range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["run"]["id"] for r in responses}) == 1
    run = db.session.query(Run).one()
    assert (run.trigger, run.mode, run.requested_by) == ("schedule", "incremental", "cron")


def test_cron_sync_of_a_manual_only_connection_is_refused(client, cron, make_connection):
    make_connection(name="zoom", schedule="manual")
    response = client.post("/api/cron/sync/zoom", headers=cron)
    assert response.status_code == 409 and "manual-only" in response.get_json()["reason"]


def test_cron_jobs_run_and_report(client, cron):
    for job in ("sweep", "webhooks"):
        response = client.post(f"/api/cron/{job}", headers=cron)
        assert response.status_code == 200 and response.get_json()["job"] == job
    assert client.post("/api/cron/webhooks", headers=cron).get_json()["result"] == {"deliveries_enqueued": 0}
    unknown = client.post("/api/cron/reboot", headers=cron)
    assert unknown.status_code == 404 and "sweep" in unknown.get_json()["reason"]


def test_concurrent_cron_ticks_queue_one_run_per_due_slot(app, cron, make_connection):
    from datetime import timedelta

    from webapp.models import utcnow

    connection = make_connection(name="halo", schedule="every:5")
    connection.next_run_at = utcnow() - timedelta(minutes=1)
    db.session.commit()
    with SimulatorServer(app) as server, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: requests.post(f"{server.url}/api/cron/tick", headers=cron, timeout=30),
                                  range(6)))
    assert [r.status_code for r in responses] == [200] * 6
    run = db.session.query(Run).one()
    assert run.trigger == "schedule" and run.requested_by.startswith("cron")
    db.session.expire_all()
    assert db.session.get(type(connection), connection.id).next_run_at > utcnow()


def test_cron_cleanup_reports_what_it_deleted(client, cron):
    response = client.post("/api/cron/cleanup", headers=cron)
    assert response.status_code == 200
    assert set(response.get_json()["result"]) >= {"runs", "run_events", "webhook_deliveries"}
