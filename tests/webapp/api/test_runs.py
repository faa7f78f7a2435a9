"""Runs and connections over the JSON API: token auth, trigger semantics, filters and
pagination, progress, cancel, events; errors are JSON with a stable code."""
from sqlalchemy import update

from tests.support import TAKES_WEBHOOKS
from webapp import runs
from webapp.extensions import db
from webapp.models import ApiToken, Run, utcnow
from webapp.progress import ProgressPublisher


def test_requests_without_a_valid_token_are_refused_with_json(client, make_connection, token):
    make_connection()
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {token}"}):
        response = client.get("/api/runs", headers=headers)
        assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"
    db.session.execute(update(ApiToken).values(revoked_at=utcnow()))
    db.session.commit()
    assert client.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_trigger_returns_201_then_200_with_the_same_active_run(client, auth, make_connection):
    make_connection(name="halo")
    first = client.post("/api/connections/halo/runs", json={"mode": "range", "params": {"fiscal_year": 2027}}, headers=auth)
    again = client.post("/api/connections/halo/runs", json={"mode": "range", "params": {"fiscal_year": 2027}},
                        headers=auth)
    assert first.status_code == 201 and first.get_json()["created"] is True and first.get_json()["outcome"] == "queued"
    assert again.status_code == 200 and again.get_json()["created"] is False and again.get_json()["outcome"] == "active"
    run = first.get_json()["run"]
    assert again.get_json()["run"]["id"] == run["id"]
    assert (run["trigger"], run["mode"], run["params"], run["status"]) == ("api", "range", {"fiscal_year": 2027}, "queued")


def test_trigger_with_other_parameters_during_a_sync_answers_a_waiting_follow_up(client, auth, make_connection):
    make_connection(name="halo")
    first = client.post("/api/connections/halo/runs", json={"mode": "full"}, headers=auth).get_json()["run"]
    follow = client.post("/api/connections/halo/runs", json={"mode": "range", "params": {"fiscal_year": 2027}},
                         headers=auth)
    body = follow.get_json()
    assert follow.status_code == 201 and (body["created"], body["outcome"]) == (True, "follow_up")
    assert body["active_run"]["id"] == first["id"] and body["run"]["status"] == "waiting"
    assert body["run"]["waiting_reason"] == f"waiting for run {first['id']} of this connection to end"
    shown = client.get(f"/api/runs/{body['run']['id']}", headers=auth).get_json()["run"]
    assert (shown["status"], shown["not_before"], shown["waiting_reason"]) == ("waiting", None, body["run"]["waiting_reason"])
    listed = client.get("/api/runs?status=waiting", headers=auth).get_json()["runs"]
    assert [r["id"] for r in listed] == [body["run"]["id"]]
    cancelled = client.post(f"/api/runs/{body['run']['id']}/cancel", headers=auth).get_json()
    assert cancelled["status"] == "cancelled" and cancelled["run"]["waiting_reason"] is None


def test_a_deferred_run_shows_until_when_and_why(client, auth, make_connection):
    conn = make_connection(name="halo")
    run = runs.trigger(conn, trigger="api", enqueue=False).run
    runs.defer(run.id, runs.claim(run.id, "w"), seconds=3600, reason="waiting for HaloPSA's rate limit")
    shown = client.get(f"/api/runs/{run.id}", headers=auth).get_json()["run"]
    assert shown["status"] == "waiting" and shown["not_before"].endswith("Z") and shown["attempt"] == 0
    assert shown["waiting_reason"].startswith("waiting for HaloPSA's rate limit until ") and shown["deferrals"] == 1


def test_trigger_refused_by_the_connections_trigger_policy_is_409_with_the_reason(client, auth, make_connection):
    make_connection(name="zoom", schedule="manual")  # manual-only by default: API triggers still welcome
    make_connection(name="hooks", schedule="hourly:0", settings={"allowed_triggers": ["manual", "webhook"]})
    assert client.post("/api/connections/zoom/runs", json={}, headers=auth).status_code == 201
    refused = client.post("/api/connections/hooks/runs", json={"mode": "full"}, headers=auth)
    assert refused.status_code == 409
    assert refused.get_json() == {"error": "trigger_refused", "reason": "API triggers are off for connection 'hooks'"}
    assert [r.connection.name for r in db.session.query(Run)] == ["zoom"]
    shown = client.get("/api/connections/hooks", headers=auth).get_json()["connection"]
    assert shown["allowed_triggers"] == ["manual", "webhook"]
    assert client.get("/api/connections/zoom", headers=auth).get_json()["connection"]["allowed_triggers"] == ["manual", "api"]


def test_trigger_errors_are_json_with_stable_codes(client, auth, make_connection):
    make_connection(name="off", enabled=False)
    make_connection(name="on")
    cases = [
        ("/api/connections/nope/runs", {}, 404, "not_found"),
        ("/api/connections/on/runs", {"mode": "sideways"}, 400, "bad_request"),
        ("/api/connections/on/runs", {"streams": ["no-such-stream"]}, 409, "unknown_stream"),
        ("/api/connections/on/runs", {"params": [1, 2]}, 400, "bad_request"),
        ("/api/connections/99999999999/runs", {}, 404, "not_found"),
    ]
    for url, body, status, code in cases:
        response = client.post(url, json=body, headers=auth)
        assert (response.status_code, response.get_json()["error"]) == (status, code), url
        assert response.get_json()["reason"]
    bad_json = client.post("/api/connections/on/runs", data=b"{nope", headers=dict(auth, **{"Content-Type": "application/json"}))
    assert bad_json.status_code == 400 and bad_json.get_json()["error"] == "bad_request"
    assert db.session.query(Run).count() == 0


def test_unknown_api_url_and_wrong_method_answer_json(client, auth):
    missing = client.get("/api/no-such-thing", headers=auth)
    assert missing.status_code == 404 and missing.is_json and missing.get_json()["error"] == "not_found"
    wrong = client.delete("/api/runs", headers=auth)
    assert wrong.status_code == 405 and wrong.is_json


def test_list_runs_filters_and_pages_newest_first(client, auth, make_connection):
    a, b = make_connection(name="a", settings=TAKES_WEBHOOKS), make_connection(name="b")
    ids = []
    for n in range(5):
        ids.append(runs.trigger(a, mode="record", record_key=f"items:{n}", trigger="webhook", enqueue=False).run.id)
    ids.append(runs.trigger(b, trigger="api", enqueue=False).run.id)
    page1 = client.get("/api/runs?connection=a&limit=3", headers=auth).get_json()
    assert [r["id"] for r in page1["runs"]] == ids[4:1:-1]
    page2 = client.get(f"/api/runs?connection=a&limit=3&cursor={page1['next_cursor']}", headers=auth).get_json()
    assert [r["id"] for r in page2["runs"]] == ids[1::-1] and page2["next_cursor"] is None
    only_api = client.get("/api/runs?trigger=api", headers=auth).get_json()["runs"]
    assert [r["id"] for r in only_api] == [ids[5]]
    assert client.get("/api/runs?status=stuck", headers=auth).status_code == 400
    assert client.get("/api/runs?limit=0", headers=auth).status_code == 400


def test_show_run_has_counters_and_the_live_snapshot(client, auth, make_connection, redis):
    run = runs.trigger(make_connection(), enqueue=False).run
    ProgressPublisher(redis, run.id).publish({"phase": "fetching items", "processed": 40, "total": 100, "percent": 40.0})
    body = client.get(f"/api/runs/{run.id}", headers=auth).get_json()
    assert body["run"]["id"] == run.id and body["run"]["counters"]["seen"] == 0
    assert body["progress"]["processed"] == 40 and body["progress"]["phase"] == "fetching items"
    assert client.get("/api/runs/12345", headers=auth).status_code == 404
    assert client.get("/api/runs/abc", headers=auth).get_json()["error"] == "not_found"


def test_cancel_a_queued_run_then_cancelling_again_is_409(client, auth, make_connection):
    run = runs.trigger(make_connection(), enqueue=False).run
    response = client.post(f"/api/runs/{run.id}/cancel", headers=auth)
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    assert response.get_json()["run"]["status"] == "cancelled"
    db.session.expire_all()
    assert db.session.get(Run, run.id).status == "cancelled"
    again = client.post(f"/api/runs/{run.id}/cancel", headers=auth)
    assert again.status_code == 409 and again.get_json()["error"] == "not_active"


def test_run_events_list_the_log_and_record_errors(client, auth, make_connection):
    run = runs.trigger(make_connection(), enqueue=False).run
    runs.log_event(run.id, "item-7: price is not a number", level="warning", kind="record_error",
                   stream="items", record_key="item-7", commit=True)
    everything = client.get(f"/api/runs/{run.id}/events", headers=auth).get_json()["events"]
    assert [e["kind"] for e in everything] == ["log", "record_error"]
    errors = client.get(f"/api/runs/{run.id}/events?kind=record_error", headers=auth).get_json()["events"]
    assert [(e["record_key"], e["message"]) for e in errors] == [("item-7", "item-7: price is not a number")]


def test_connections_are_listed_without_their_credentials(client, auth, make_connection):
    make_connection(name="zoom", credentials={"client_secret": "very-secret-value", "webhook_secret": "whsec_c2VjcmV0"})
    listed = client.get("/api/connections", headers=auth)
    shown = client.get("/api/connections/zoom", headers=auth)
    for response in (listed, shown):
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert "very-secret-value" not in text and "whsec_" not in text and "credentials_encrypted" not in text
    assert shown.get_json()["connection"]["has_credentials"] is True
    assert shown.get_json()["active_run"] is None


def test_stats_are_computed_from_the_job_table(client, auth, make_connection):
    from datetime import timedelta

    a, b = make_connection(name="a"), make_connection(name="b")
    done = runs.trigger(a, enqueue=False).run
    attempt = runs.claim(done.id, "w")
    db.session.execute(update(Run).where(Run.id == done.id).values(started_at=utcnow() - timedelta(seconds=20)))
    runs.finish(done.id, attempt, "completed", counts={"seen": 40, "created": 40})
    broken = runs.trigger(b, enqueue=False).run
    runs.finish(broken.id, runs.claim(broken.id, "w"), "failed", error_class="auth", error_message="401")
    runs.trigger(a, enqueue=False)  # queued
    stats = client.get("/api/stats?days=1", headers=auth).get_json()
    assert stats["runs"] == 3 and stats["by_status"]["completed"] == 1 and stats["by_status"]["failed"] == 1
    assert stats["by_status"]["queued"] == 1 and stats["success_rate"] == 0.5
    # From the roll-ups' histogram: within its stated error (webapp/rollups.py); the mean is exact.
    assert 19 <= stats["duration_seconds"]["p95"] <= 21.5
    assert 9.9 <= stats["duration_seconds"]["mean"] <= 10.6  # 20 s and the failed run's next to nothing
    only_a = client.get("/api/stats?connection=a", headers=auth).get_json()
    assert only_a["runs"] == 2 and only_a["success_rate"] == 1.0 and only_a["records_per_run"] == 40.0
    assert client.get("/api/stats?days=0", headers=auth).status_code == 400


def test_health_reports_database_redis_and_queues(client, auth, make_connection):
    runs.trigger(make_connection(), enqueue=True)
    body = client.get("/api/health", headers=auth)
    assert body.status_code == 200
    health = body.get_json()
    assert health["checks"] == {"database": "ok", "redis": "ok"} and health["status"] == "ok"
    assert health["queued"] == 1 and health["queues"]["default"] == 1
    assert client.get("/api/health").status_code == 401
