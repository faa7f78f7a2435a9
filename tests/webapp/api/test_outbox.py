"""POST /api/outbox (token), GET /api/outbox, and the cron drain endpoint (shared secret)."""
from rq import Queue
from sqlalchemy import func, select

from tests.webapp.outbox.support import loops, loops_connection  # noqa: F401  (fixture)
from webapp.api.auth import create_token
from webapp.extensions import db
from webapp.models import OutboxEvent
from webapp.outbox.enqueue import drain_job_marker
from webapp.queue import queue_name

VOTE = {"type": "vote_cast", "key": "vote-1", "payload": {"voter": {"email": "carol@example.com"}}}


def _auth():
    return {"Authorization": f"Bearer {create_token('app')}"}


def _count():
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(OutboxEvent))


def test_publishing_needs_a_valid_token(app, make_connection, loops):
    loops_connection(make_connection, loops)
    client = app.test_client()
    assert client.post("/api/outbox", json=VOTE).status_code == 401
    assert client.post("/api/outbox", json=VOTE, headers={"Authorization": "Bearer shk_wrong"}).status_code == 401
    assert _count() == 0


def test_publish_answers_202_with_the_event_ids_and_a_repeat_is_a_duplicate(app, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    client, headers = app.test_client(), _auth()
    first = client.post("/api/outbox", json=VOTE, headers={**headers, "Idempotency-Key": "vote-1"})
    assert first.status_code == 202
    assert first.get_json() == {"event_ids": [first.get_json()["event_ids"][0]], "duplicate": False}
    again = client.post("/api/outbox", json=VOTE, headers={**headers, "Idempotency-Key": "vote-1"})
    assert again.status_code == 202 and again.get_json() == {**first.get_json(), "duplicate": True}
    assert _count() == 1
    row = db.session.get(OutboxEvent, first.get_json()["event_ids"][0])
    assert (row.idempotency_key, row.key, row.status) == ("vote-1.0", "carol@example.com", "pending")
    assert [j.func_name for j in Queue(queue_name("high"), connection=redis).jobs] == ["worker.jobs.send_outbox_event"]


def test_a_batch_is_published_all_or_nothing(app, make_connection, loops):
    loops_connection(make_connection, loops)
    client, headers = app.test_client(), _auth()
    bad = {"type": "vote_cast", "key": "vote-2", "payload": {"voter": {}}}
    refused = client.post("/api/outbox", json={"events": [VOTE, bad]}, headers=headers)
    assert refused.status_code == 422
    assert refused.get_json() == {"error": "unprocessable",
                                  "reason": "events[1]: mappings['vote_cast'] rule 1.email: "
                                            "the event has no field 'voter.email'"}
    assert _count() == 0
    fine = {"type": "vote_cast", "key": "vote-2", "payload": {"voter": {"email": "dave@example.com"}}}
    accepted = client.post("/api/outbox", json={"events": [VOTE, fine]}, headers=headers)
    assert accepted.status_code == 202 and len(accepted.get_json()["event_ids"]) == 2
    assert [e["duplicate"] for e in accepted.get_json()["events"]] == [False, False]


def test_malformed_requests_get_clear_errors(app, make_connection, loops):
    loops_connection(make_connection, loops)
    client, headers = app.test_client(), _auth()
    cases = [
        (dict(data="not json", content_type="application/json"), 400, "the body must be a JSON object"),
        (dict(json={"events": []}), 400, "events must be a list of 1 to 100"),
        (dict(json={**VOTE, "colour": "red"}), 422, "unknown field(s): colour"),
        (dict(json={**VOTE, "type": ""}), 422, "type must be a non-empty string"),
        (dict(json={"type": "nobody_maps_this", "key": "k", "payload": {}}), 409, "no destination maps"),
        (dict(json={**VOTE, "connection": "nope"}), 409, "no connection 'nope'"),
    ]
    for kwargs, status, reason in cases:
        response = client.post("/api/outbox", headers=headers, **kwargs)
        assert response.status_code == status, (kwargs, response.get_json())
        assert reason in response.get_json()["reason"]
    assert _count() == 0


def test_events_can_be_listed_filtered_and_shown(app, make_connection, loops):
    loops_connection(make_connection, loops)
    client, headers = app.test_client(), _auth()
    client.post("/api/outbox", json=VOTE, headers=headers)
    client.post("/api/outbox", headers=headers, json={
        "type": "vote_cast", "key": "vote-2", "payload": {"voter": {"email": "dave@example.com"}}})
    listing = client.get("/api/outbox?key=dave@example.com", headers=headers).get_json()
    assert listing["counts"] == {"pending": 2, "processing": 0, "done": 0, "dead": 0}
    [event] = listing["events"]
    assert (event["type"], event["status"], event["payload"]["body"]["userGroup"]) == ("vote_cast", "pending", "Voters")
    assert client.get(f"/api/outbox/{event['id']}", headers=headers).get_json()["key"] == "dave@example.com"
    assert client.get("/api/outbox/999999", headers=headers).status_code == 404
    assert client.get("/api/outbox?status=lost", headers=headers).status_code == 400
    assert client.get("/api/outbox", headers={}).status_code == 401


def test_cron_drain_needs_the_secret_and_queues_one_drain_at_a_time(app, redis):
    app.config["CRON_SECRET"] = "cron-s3cret"
    client = app.test_client()
    assert client.post("/api/cron/outbox/drain").status_code == 401
    assert client.post("/api/cron/outbox/drain", headers={"X-Cron-Secret": "wrong"}).status_code == 401
    first = client.post("/api/cron/outbox/drain", headers={"X-Cron-Secret": "cron-s3cret"})
    assert first.status_code == 202 and first.get_json()["enqueued"] is True
    second = client.post("/api/cron/outbox/drain", headers={"X-Cron-Secret": "cron-s3cret"})
    assert second.status_code == 202 and second.get_json()["enqueued"] is False
    assert [j.func_name for j in Queue(queue_name("default"), connection=redis).jobs] == ["worker.jobs.send_due_outbox_events"]
    redis.delete(drain_job_marker())  # the queued job started
    third = client.post("/api/cron/outbox/drain", headers={"X-Cron-Secret": "cron-s3cret"})
    assert third.get_json()["enqueued"] is True
