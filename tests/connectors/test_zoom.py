"""Zoom connector against its simulator over real HTTP: S2S OAuth renewal, page-token
expiry, validation, date range, record lookups, webhooks, per-category rate limits."""
import json
import uuid
from datetime import datetime, timezone

import pytest
import redis as redis_lib
from sqlalchemy import func, select

from tests.simulators.zoom import ZoomAPI
from webapp import runs
from webapp.connectors.base import ReadRequest, Services
from webapp.connectors.errors import BadRecord
from webapp.connectors.zoom import ZoomConnector, validate_webinar_data
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, Connection, Record, Run, RunEvent
from webapp.webhooks.signatures import SignatureError, verify_zoom
from worker.engine import execute_run

FAST = {"HTTP_BACKOFF_BASE_SECONDS": 0.05, "HTTP_BACKOFF_MAX_SECONDS": 0.2, "HTTP_MAX_RETRIES": 3}
CREDENTIALS = {"account_id": "zoom-account", "client_id": "zoom-client", "client_secret": "zoom-client-secret"}


def settings(server, **extra):
    return {"base_url": server.url + "/v2", "token_url": server.url + "/oauth/token", "page_size": 10,
            "rate_limit_key": f"zoom-test:{uuid.uuid4().hex}", **extra}


@pytest.fixture
def zoom(serve):
    api = ZoomAPI(webinars=40, seed=3)
    api.server = serve(api)
    return api


def _connector(zoom, **extra):
    return ZoomConnector(settings(zoom.server, **extra), CREDENTIALS, Services(config=FAST, connection_id="t"))


def _read_all(connector, stream, request):
    records, state, pages = [], None, 0
    while True:
        page = connector.read_page(connector.stream(stream), request, state)
        records += page.records
        pages += 1
        state = page.next_state
        if state is None:
            return records, pages


def test_expired_page_token_restarts_the_listing_from_the_first_page(zoom):
    connector = _connector(zoom)
    first = connector.read_page(connector.stream("webinars"), ReadRequest("full"), None)
    second = connector.read_page(connector.stream("webinars"), ReadRequest("full"), first.next_state)
    zoom.expire_page_tokens()  # as if the run had been interrupted for more than 15 minutes
    restarted = connector.read_page(connector.stream("webinars"), ReadRequest("full"), second.next_state)
    assert [w["id"] for w in restarted.records] == [w["id"] for w in first.records]
    assert restarted.next_state["restarts"] == 1
    refused = [e for e in zoom.server.log.entries("/v2/users") if e.status == 400]
    assert len(refused) == 1  # the dead token was refused, once
    records, state = list(restarted.records), restarted.next_state
    while state:
        page = connector.read_page(connector.stream("webinars"), ReadRequest("full"), state)
        records += page.records
        state = page.next_state
    assert sorted(w["id"] for w in records) == sorted(zoom.webinars)  # all, each once after the restart


def test_token_expiring_mid_listing_is_renewed_not_failed(zoom):
    connector = _connector(zoom)
    zoom.after(2, zoom.expire_tokens, path="/v2/users")
    records, pages = _read_all(connector, "webinars", ReadRequest("full"))
    assert len(records) == 40 and pages == 4
    assert zoom.token_requests == 2  # one at the start, one after the 401
    assert [e.status for e in zoom.server.log.entries("/v2/users")].count(401) == 1


def test_revoked_app_fails_the_run_and_marks_the_connection_needs_reauth(app, make_connection, redis, zoom):
    conn = make_connection(name="zoom", connector="zoom", settings=settings(zoom.server), credentials=CREDENTIALS)
    zoom.revoke()
    run = runs.trigger(conn, enqueue=False).run
    assert execute_run(run.id, redis_client=redis, worker_name="t") == FAILED
    db.session.expire_all()
    run = db.session.get(Run, run.id)
    assert run.error_class == "auth" and run.attempt == 1
    assert db.session.get(Connection, conn.id).health == "needs_reauth"
    assert "zoom-client-secret" not in run.error_message


def test_invalid_webinars_are_skipped_and_logged_with_their_reason(app, make_connection, redis, serve):
    api = ZoomAPI(webinars=40, seed=3, malformed_every=10)
    api.server = serve(api)
    conn = make_connection(name="zoom", connector="zoom", settings=settings(api.server), credentials=CREDENTIALS)
    run = runs.trigger(conn, enqueue=False, streams=["webinars"]).run
    assert execute_run(run.id, redis_client=redis, worker_name="t") == COMPLETED
    db.session.expire_all()
    run = db.session.get(Run, run.id)
    assert (run.created, run.failed) == (36, 4)
    stored = set(db.session.scalars(select(Record.external_id).where(Record.connection_id == conn.id)))
    assert stored == {str(i) for i in api.valid_ids()}
    reasons = db.session.scalars(select(RunEvent.message).where(RunEvent.run_id == run.id,
                                                                RunEvent.kind == "record_error")).all()
    assert len(reasons) == 4 and all(r.startswith("invalid webinar") for r in reasons)
    assert any("topic is required" in r for r in reasons) and any("start_time" in r for r in reasons)


@pytest.mark.parametrize("change, reason", [
    ({"topic": ""}, "topic is required"),
    ({"start_time": "2026-13-45"}, "start_time"),
    ({"id": "85000000001"}, "id must be a positive integer"),
    ({"duration": -1}, "duration"),
    ({"type": 2}, "type must be one of"),
])
def test_validate_webinar_data_names_what_is_wrong(change, reason):
    webinar = {"uuid": "u==", "id": 85000000001, "topic": "t", "type": 5, "start_time": "2026-01-05T10:00:00Z",
               "duration": 60, "timezone": "UTC"}
    validate_webinar_data(webinar)
    with pytest.raises(BadRecord, match=reason):
        validate_webinar_data({**webinar, **change})
    validate_webinar_data({k: v for k, v in webinar.items() if k != "start_time"} | {"type": 6})


def test_range_mode_keeps_webinars_starting_in_the_window_and_their_registrants(zoom):
    connector = _connector(zoom)
    request = ReadRequest("range", {"since": "2025-06-01", "until": "2025-12-01"})
    webinars, _ = _read_all(connector, "webinars", request)
    expected = {w["id"] for w in zoom.webinars.values() if "2025-06-01" <= w["start_time"] < "2025-12-01"}
    assert {w["id"] for w in webinars} == expected and 0 < len(expected) < 40
    registrants, _ = _read_all(connector, "registrants", request)
    assert {r["webinar_id"] for r in registrants} <= expected
    assert len(registrants) == sum(len(zoom.registrants[i]) for i in expected)
    assert all(r["key"] == f"{r['webinar_id']}:{r['id']}" for r in registrants)


def test_participants_respect_the_heavy_category_limit_shared_in_redis(serve, limiter_redis_url):
    zoom = ZoomAPI(webinars=14, seed=3, rate_limits={"light": (30, 1.0), "medium": (20, 1.0), "heavy": (5, 1.0)})
    zoom.server = serve(zoom)
    services = Services(config=FAST, redis=redis_lib.Redis.from_url(limiter_redis_url), connection_id="t")
    connector = ZoomConnector(settings(zoom.server, rate_limits={"heavy": [5, 1.25]}), CREDENTIALS, services)
    participants, _ = _read_all(connector, "participants", ReadRequest("full"))
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    past = [i for i, w in zoom.webinars.items() if w["start_time"] <= now]
    assert 5 < len(past) <= 14 and len(participants) == sum(len(zoom.participants[i]) for i in past)
    assert zoom.violations == 0 and zoom.windows["heavy"].busiest == 5


def test_record_lookup_returns_the_webinar_or_nothing_when_deleted(zoom):
    connector = _connector(zoom)
    webinar_id = next(iter(zoom.webinars))
    page = connector.read_page(connector.stream("webinars"), ReadRequest("record", {"record_id": str(webinar_id)}), None)
    assert page.records == [zoom.webinars[webinar_id]]
    zoom.delete(ids=[webinar_id])
    page = connector.read_page(connector.stream("webinars"), ReadRequest("record", {"record_id": str(webinar_id)}), None)
    assert page.records == [] and page.next_state is None


def test_webinar_webhooks_map_to_record_runs(zoom):
    connector = _connector(zoom)
    webinar_id = next(iter(zoom.webinars))
    for event, deleted in (("webinar.created", False), ("webinar.updated", False), ("webinar.deleted", True)):
        payload = json.loads(zoom.webhook_body(event, webinar_id))
        assert connector.webhook_events(payload) == [("webinars", str(webinar_id), deleted)]
    assert connector.webhook_events(json.loads(zoom.webhook_body("meeting.created", webinar_id))) == []
    body = zoom.webhook_body("webinar.updated", webinar_id)
    verify_zoom(body, zoom.sign(body), "zoom-webhook-secret")  # the hub accepts what the simulator signs
    with pytest.raises(SignatureError):
        verify_zoom(body + b" ", zoom.sign(body), "zoom-webhook-secret")
    foreign = json.loads(zoom.webhook_body("webinar.updated", webinar_id))
    foreign["payload"]["account_id"] = "someone-else"
    assert connector.webhook_events(foreign) == []


def test_a_full_sync_counts_every_stream_and_each_stream_on_its_own(app, make_connection, redis, zoom):
    conn = make_connection(name="zoom", connector="zoom", settings=settings(zoom.server), credentials=CREDENTIALS)
    run = runs.trigger(conn, enqueue=False).run
    assert execute_run(run.id, redis_client=redis, worker_name="t") == COMPLETED
    db.session.expire_all()
    run = db.session.get(Run, run.id)
    stored = {stream: count for stream, count in db.session.execute(
        select(Record.stream, func.count()).where(Record.connection_id == conn.id).group_by(Record.stream)).all()}
    assert set(run.stream_counters) == {"webinars", "registrants", "participants"}
    for stream, counters in run.stream_counters.items():
        assert counters["created"] == stored.get(stream, 0), stream
    assert stored["registrants"] > 0 and stored["participants"] > 0
    # The run's own counters are the streams' together.
    for key in ("seen", "created", "updated", "unchanged", "deleted", "failed"):
        assert run.counters[key] == sum(c.get(key, 0) for c in run.stream_counters.values()), key
    shown = app.test_client().get(f"/api/runs/{run.id}", headers={"Authorization": f"Bearer {_token()}"}).get_json()
    assert shown["run"]["stream_counters"]["webinars"]["created"] == stored["webinars"]


def _token():
    from webapp.api.auth import create_token

    return create_token(f"t-{uuid.uuid4().hex[:6]}")
