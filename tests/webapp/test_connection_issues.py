"""Connection health (webapp/connection_issues.py): issues by cause, pausing and resuming,
freshness, and notifications delivered through the outbox to a real HTTP receiver."""
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.simulators.receiver import NotificationReceiver
from tests.support import TAKES_WEBHOOKS
from tests.webapp.outbox.support import make_due
from tests.webapp.webhooks.signing import whsec
from webapp import alerts, connection_issues as issues, runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, Connection, ConnectionIssue, OutboxEvent, Run, utcnow
from worker.outbox_sender import OutboxSender

EVERY = {"allowed_triggers": ["manual", "schedule", "webhook", "event", "api"]}


@pytest.fixture
def receiver(app, make_connection, serve):
    """The team's notification endpoint, and the `notify` connection pointing at it."""
    secret = whsec()
    endpoint = NotificationReceiver(secret)
    endpoint.server = serve(endpoint)
    make_connection(name="alerts", connector="notify", settings={"format": "standard"},
                    credentials={"url": endpoint.server.url + "/hooks/synchub", "signing_secret": secret})
    return endpoint


def _deliver(redis):
    """What a worker's outbox drain does, here in the test's process."""
    OutboxSender(redis_client=redis, worker_name="test").drain()


def _ended(conn, status, error_class=None, message=None, seen=0, failed=0, mode="full"):
    kwargs = {"mode": mode, "params": {"n": _ended.n}} if mode != "record" else {
        "mode": "record", "record_key": f"items:item-{_ended.n}", "trigger": "webhook"}
    _ended.n += 1
    run = runs.trigger(conn, enqueue=False, **kwargs).run
    attempt = runs.claim(run.id, "w")
    counts = {"seen": seen, "failed": failed}
    assert runs.finish(run.id, attempt, status, error_class=error_class, error_message=message, counts=counts)
    return run


_ended.n = 0


def _issues(conn=None, cause=None):
    db.session.rollback()
    query = select(ConnectionIssue).order_by(ConnectionIssue.id)
    if conn is not None:
        query = query.where(ConnectionIssue.connection_id == conn.id)
    if cause is not None:
        query = query.where(ConnectionIssue.cause == cause)
    return db.session.execute(query).scalars().all()


def _connection(conn):
    db.session.expire_all()
    return db.session.get(Connection, conn.id)


def test_expired_credentials_open_one_issue_pause_the_connection_and_announce_it_once(
        app, make_connection, receiver, redis):
    conn = make_connection(name="halo", schedule="hourly:0", settings=EVERY)
    runs_ = [_ended(conn, FAILED, "auth", "POST /token: HTTP 401 invalid_client; credentials rejected")
             for _ in range(3)]
    [issue] = _issues(conn)
    assert (issue.cause, issue.occurrences, issue.resolved_at) == (issues.AUTH_EXPIRED, 3, None)
    assert issue.run_ids == [r.id for r in runs_] and "HTTP 401" in issue.last_message
    paused = _connection(conn)
    assert paused.paused_at is not None and paused.paused_reason == "credentials expired"

    # Scheduled and event runs are refused and counted; manual ones still go.
    for trigger in ("schedule", "event", "schedule"):
        with pytest.raises(runs.TriggerRefused, match="is paused: credentials expired since .*skipped"):
            runs.trigger(_connection(conn), trigger=trigger, enqueue=False)
    assert "3 runs skipped" in issues.describe_pause(_connection(conn))
    manual = runs.trigger(_connection(conn), mode="incremental", trigger="manual", enqueue=False).run
    runs.cancel(manual.id)

    _deliver(redis)
    [opened] = receiver.of_type("issue.opened")
    assert opened["data"]["issue"]["cause"] == "auth_expired" and opened["data"]["issue"]["connection"] == "halo"
    assert opened["data"]["text"].startswith("[synchub] halo: credentials expired (auth_expired)")
    assert receiver.refused == 0  # every notification carried a valid signature

    # New credentials saved: resolved, resumed, and one run proves it.
    proving = runs.resume_connection(_connection(conn), credentials_changed=True, settings_changed=False,
                                     requested_by="admin@example.com")
    assert proving is not None and proving.trigger == "manual" and "proving run" in proving.requested_by
    [issue] = _issues(conn)
    assert issue.resolved_at is not None and issue.resolution == "new credentials saved by admin@example.com"
    assert _connection(conn).paused_at is None
    assert runs.trigger(_connection(conn), trigger="schedule", enqueue=False).run.id == proving.id  # no longer paused
    _deliver(redis)
    assert len(receiver.of_type("issue.resolved")) == 1 and len(receiver.of_type("issue.opened")) == 1


def test_a_403_is_permission_denied(app, make_connection):
    conn = make_connection(name="zoom")
    _ended(conn, FAILED, "auth", "GET /v2/users/me/webinars: HTTP 403 Forbidden; credentials rejected")
    assert [i.cause for i in _issues(conn)] == [issues.PERMISSION_DENIED]


def test_fifty_failures_of_one_cause_make_one_issue_one_notification_and_a_pause_after_ten(
        app, make_connection, receiver, redis):
    conn = make_connection(name="flaky", schedule="hourly:0", settings=EVERY)
    for n in range(50):
        _ended(conn, FAILED, "transient", f"GET /items: HTTP 503 (attempt set {n})")
        if n == 8:
            assert _connection(conn).paused_at is None  # nine failures: not yet
    [issue] = _issues(conn)
    assert (issue.cause, issue.occurrences) == (issues.PROVIDER_DOWN, 50)
    assert len(issue.run_ids) == issues.RUNS_KEPT and "attempt set 49" in issue.last_message
    assert _connection(conn).paused_reason == "10 failed runs in a row (provider unreachable)"
    _deliver(redis)
    assert len(receiver.of_type("issue.opened")) == 1
    # A success resolves it and ends the streak (resuming needs a person: it stays paused).
    _ended(conn, COMPLETED, seen=10)
    assert _issues(conn)[0].resolution.endswith("completed")


def test_records_rejected_opens_above_the_threshold_and_resolves_below_it(app, make_connection):
    conn = make_connection(name="dirty")
    _ended(conn, COMPLETED, seen=100, failed=30)
    [issue] = _issues(conn)
    assert issue.cause == issues.RECORDS_REJECTED and "skipped 30 of 100 records (30 %)" in issue.last_message
    _ended(conn, COMPLETED, seen=100, failed=5)
    assert _issues(conn)[0].resolved_at is not None
    assert _connection(conn).paused_at is None  # not a pausing cause


def test_a_failed_record_run_opens_no_issue_unless_credentials_failed(app, make_connection):
    conn = make_connection(name="hooks", settings=TAKES_WEBHOOKS)
    _ended(conn, FAILED, "config", "GET /items/9: HTTP 404 Not Found", mode="record")
    assert _issues(conn) == []
    _ended(conn, FAILED, "auth", "GET /items/9: HTTP 401; credentials rejected", mode="record")
    assert [i.cause for i in _issues(conn)] == [issues.AUTH_EXPIRED]


def test_a_long_rate_limit_opens_quota_exhausted_and_the_completed_run_resolves_it(app, make_connection):
    conn = make_connection(name="quota")
    run = runs.trigger(conn, enqueue=False).run
    runs.defer(run.id, runs.claim(run.id, "w"), seconds=3600, reason="waiting for HighLevel's rate limit")
    [issue] = _issues(conn)
    assert issue.cause == issues.QUOTA_EXHAUSTED and issue.last_message.startswith("waiting for HighLevel's rate limit")
    runs.promote_waiting(utcnow() + timedelta(hours=2))
    attempt = runs.claim(run.id, "w")
    runs.finish(run.id, attempt, COMPLETED)
    assert _issues(conn)[0].resolved_at is not None


def test_a_freshness_target_opens_stale_data_once_and_a_fresh_sync_resolves_it(app, make_connection, receiver, redis):
    conn = make_connection(name="hourly", settings={"freshness_minutes": 2})
    _ended(conn, COMPLETED, seen=5)
    now = utcnow()
    assert issues.check_freshness(now) == {"stale": [], "fresh": []}
    later = now + timedelta(minutes=3)  # the supervisor's clock moved on
    for _ in range(3):
        assert issues.check_freshness(later)["stale"] == ["hourly"]
    [issue] = _issues(conn)
    assert (issue.cause, issue.occurrences) == (issues.STALE_DATA, 1)
    assert "the data is 3 min old; the target is 2 min" in issue.last_message
    _ended(conn, COMPLETED, seen=5)  # a fresh sync lands
    assert _issues(conn)[0].resolution.endswith("brought fresh data")
    _deliver(redis)
    assert (len(receiver.of_type("issue.opened")), len(receiver.of_type("issue.resolved"))) == (1, 1)


def test_a_notification_endpoint_that_is_down_gets_it_once_when_it_is_back(app, make_connection, receiver, redis):
    receiver.down = True
    conn = make_connection(name="halo")
    _ended(conn, FAILED, "config", "settings.base_url is not a URL")
    _deliver(redis)
    [event] = db.session.execute(select(OutboxEvent)).scalars().all()
    assert event.status == "pending" and event.attempts == 1 and "503" in event.last_error
    for _ in range(2):  # still down at the next attempts
        make_due(event.id)
        _deliver(redis)
    receiver.down = False
    make_due(event.id)
    _deliver(redis)
    _deliver(redis)  # nothing left to send twice
    db.session.expire_all()
    assert db.session.get(OutboxEvent, event.id).status == "done"
    assert receiver.ids() == [event.idempotency_key]  # delivered once, with a stable webhook-id


def test_alerts_are_announced_through_the_outbox_once_per_fire_and_resolve(app, make_connection, receiver, redis):
    conn = make_connection(name="zoom")
    for _ in range(3):
        _ended(conn, FAILED, "internal", "KeyError in a connector")
    for _ in range(2):
        alerts.sync_alerts()
    _ended(conn, COMPLETED, seen=1)
    alerts.sync_alerts()
    _deliver(redis)
    fired = [b for b in receiver.of_type("alert.fired") if b["data"]["alert"]["kind"] == "consecutive_failures"]
    resolved = [b for b in receiver.of_type("alert.resolved") if b["data"]["alert"]["kind"] == "consecutive_failures"]
    assert len(fired) == 1 and fired[0]["data"]["text"].startswith("[synchub] ALERT consecutive_failures (zoom)")
    assert len(resolved) == 1


def test_without_a_destination_issues_are_kept_and_nothing_is_published(app, make_connection):
    conn = make_connection(name="quiet")
    _ended(conn, FAILED, "auth", "HTTP 401")
    assert len(_issues(conn)) == 1
    assert db.session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


def test_issues_in_the_api_readyz_and_doctor(app, make_connection):
    from webapp.api.auth import create_token
    from webapp.doctor import check_connections

    conn = make_connection(name="halo")
    _ended(conn, FAILED, "auth", "HTTP 401 invalid_client")
    other = make_connection(name="other")
    _ended(other, COMPLETED, seen=10, failed=9)
    client, headers = app.test_client(), {"Authorization": f"Bearer {create_token('t')}"}
    everything = client.get("/api/issues", headers=headers).get_json()["issues"]
    assert sorted((i["connection"], i["cause"], i["status"]) for i in everything) == [
        ("halo", "auth_expired", "open"), ("other", "records_rejected", "open")]
    mine = client.get("/api/connections/halo/issues", headers=headers).get_json()
    assert [i["cause"] for i in mine["issues"]] == ["auth_expired"] and mine["paused"].startswith("paused: credentials")
    assert client.get("/api/issues?status=resolved", headers=headers).get_json()["issues"] == []
    assert client.get("/api/issues?cause=nope", headers=headers).status_code == 400
    assert client.get("/readyz").get_json()["open_issues"] == {"auth_expired": 1, "records_rejected": 1}
    ok, message = check_connections()
    assert not ok and "halo is paused: credentials expired" in message and "records_rejected 1" in message
