"""POST /api/events: configured syncs are queued and the caller gets 202 at once."""

from webapp.extensions import db
from webapp.models import COMPLETED, Run
from tests.support import wait_for

FISCAL = {"fiscal_year.created": {"mode": "full", "params": {"fiscal_year": "{data.fiscal_year}",
                                                             "label": "FY{data.fiscal_year}"}}}


def _post(client, auth, body):
    return client.post("/api/events", json=body, headers=auth)


def test_event_returns_at_once_while_the_sync_it_starts_takes_longer(client, auth, make_connection, workers):
    # 6 pages of 500 ms: the sync needs at least 3 s; the caller must not wait for it.
    make_connection(name="halo", schedule="hourly:0",
                    settings={"records": 30, "page_size": 5, "latency_ms": 500, "event_triggers": FISCAL})
    workers.start()
    response = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2027}})
    assert response.status_code == 202
    [queued] = response.get_json()["runs"]
    assert queued["created"] is True and queued["status"] == "queued"
    # Answered before the sync ended (no wall-clock bound: a busy machine may take its time
    # to answer, but an endpoint that waited for the sync would find it completed here).
    db.session.expire_all()
    assert db.session.get(Run, queued["run_id"]).status in ("queued", "running")

    def finished():
        db.session.expire_all()
        run = db.session.get(Run, queued["run_id"])
        return run if run.status == COMPLETED else None

    run = wait_for(finished, timeout=60, message="the event's sync to complete")
    assert (run.finished_at - run.started_at).total_seconds() >= 3.0
    assert run.trigger == "event" and run.requested_by == "event:fiscal_year.created"
    assert run.params == {"fiscal_year": 2027, "label": "FY2027"}
    assert run.seen == 30


def test_event_queues_only_connections_configured_for_its_type(client, auth, make_connection):
    make_connection(name="halo", schedule="hourly:0", settings={"event_triggers": FISCAL})
    make_connection(name="other", schedule="hourly:0", settings={"event_triggers": {"user.created": {"mode": "full"}}})
    body = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2028}}).get_json()
    assert [r["connection"] for r in body["runs"]] == ["halo"] and body["refused"] == []
    assert body["runs"][0]["params"]["fiscal_year"] == 2028
    nothing = _post(client, auth, {"type": "invoice.paid", "data": {}})
    assert nothing.status_code == 202 and nothing.get_json()["runs"] == []


def test_event_refusals_are_reported_per_connection(client, auth, make_connection):
    make_connection(name="manual", schedule="manual", settings={"event_triggers": FISCAL})
    make_connection(name="halo", schedule="hourly:0", settings={"event_triggers": FISCAL})
    body = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2027}}).get_json()
    assert [r["connection"] for r in body["runs"]] == ["halo"]
    assert [r["connection"] for r in body["refused"]] == ["manual"] and "manual-only" in body["refused"][0]["reason"]
    db.session.query(Run).delete()
    db.session.commit()
    response = _post(client, auth, {"type": "fiscal_year.created", "data": {}})
    assert response.status_code == 409  # every configured connection refused: nothing was started
    missing = response.get_json()
    assert missing["runs"] == [] and {r["connection"] for r in missing["refused"]} == {"manual", "halo"}
    assert "no fiscal_year" in {r["connection"]: r["reason"] for r in missing["refused"]}["halo"]
    assert db.session.query(Run).count() == 0


def test_event_refused_by_every_configured_connection_is_409_with_the_reasons(client, auth, make_connection):
    # Takes webhooks, not events: the event starts nothing, and says why.
    make_connection(name="halo", schedule="hourly:0",
                    settings={"event_triggers": FISCAL, "allowed_triggers": ["manual", "schedule", "webhook"]})
    response = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2027}})
    assert response.status_code == 409
    body = response.get_json()
    assert body["error"] == "trigger_refused" and "event triggers are off for connection 'halo'" in body["reason"]
    assert body["runs"] == [] and body["refused"] == [
        {"connection": "halo", "reason": "event triggers are off for connection 'halo'"}]
    assert db.session.query(Run).count() == 0
    # A second connection that takes the event: 202, and the refusal is still reported.
    make_connection(name="halo2", schedule="hourly:0", settings={"event_triggers": FISCAL})
    mixed = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2027}})
    assert mixed.status_code == 202
    assert [r["connection"] for r in mixed.get_json()["runs"]] == ["halo2"]
    assert [r["connection"] for r in mixed.get_json()["refused"]] == ["halo"]


def test_second_event_while_the_sync_is_queued_returns_the_same_run(client, auth, make_connection):
    make_connection(name="halo", schedule="hourly:0", settings={"event_triggers": FISCAL})
    first = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2027}}).get_json()["runs"][0]
    second = _post(client, auth, {"type": "fiscal_year.created", "data": {"fiscal_year": 2027}}).get_json()["runs"][0]
    assert second["run_id"] == first["run_id"] and second["created"] is False


def test_malformed_events_are_400(client, auth):
    for body in ({}, {"type": ""}, {"type": "has space"}, {"type": "ok.type", "data": [1]}):
        response = _post(client, auth, body)
        assert response.status_code == 400 and response.get_json()["error"] == "bad_request", body
    assert client.post("/api/events", json={"type": "x.y"}).status_code == 401
