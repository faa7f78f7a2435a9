"""Alert conditions are computed from rows; each fires once (one row, one notification)
and clears when the condition is gone."""
import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select
from werkzeug.wrappers import Response

from tests.simulators.harness import SimulatorServer
from tests.support import TAKES_WEBHOOKS
from tests.webapp.outbox.support import make_due
from webapp import alerts, runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, RUNNING, Alert, OutboxEvent, SupervisorState, utcnow
from worker.outbox_sender import OutboxSender


@pytest.fixture
def alert_hook(app, make_connection, redis):
    """A real HTTP endpoint standing in for a Slack incoming webhook, announced to through a
    `notify` connection in Slack's format (its URL, a secret, is a credential)."""
    status = {"code": 200}

    def slack(environ, start_response):
        return Response("ok", status=status["code"])(environ, start_response)

    with SimulatorServer(slack) as server:
        make_connection(name="slack", connector="notify", settings={"format": "slack"},
                        credentials={"url": server.url + "/services/T000/B000/s3cr3t-hook-token"})
        server.status = status
        server.deliver = lambda: OutboxSender(redis_client=redis, worker_name="test").drain()
        yield server


def _posted(server, kind):
    server.deliver()
    texts = [json.loads(e.body)["text"] for e in server.log.entries("/services") if e.status == 200]
    return [t for t in texts if f" {kind}" in t]


def _finished_run(conn, status):
    run = runs.trigger(conn, trigger="api", enqueue=False).run
    attempt = runs.claim(run.id, "test-worker")
    assert runs.finish(run.id, attempt, status, error_class="auth" if status == FAILED else None,
                       error_message="provider said 401" if status == FAILED else None)
    return run


def _open(kind):
    return db.session.execute(select(Alert).where(Alert.kind == kind)).scalars().all()


def test_alert_fires_once_for_three_consecutive_failures_and_clears_after_a_success(app, make_connection, alert_hook):
    conn = make_connection(name="zoom")
    for _ in range(2):
        _finished_run(conn, FAILED)
    alerts.sync_alerts()
    assert _open(alerts.CONSECUTIVE_FAILURES) == []  # two is not three

    last = _finished_run(conn, FAILED)
    for _ in range(3):  # the supervisor checks again and again: still one alert, one message
        alerts.sync_alerts()
    [alert] = _open(alerts.CONSECUTIVE_FAILURES)
    assert alert.subject == "zoom" and alert.cleared_at is None
    assert f"run {last.id}" in alert.message and "provider said 401" in alert.message
    texts = _posted(alert_hook, alerts.CONSECUTIVE_FAILURES)
    assert len(texts) == 1 and texts[0].startswith("[synchub] ALERT consecutive_failures (zoom)")

    _finished_run(conn, COMPLETED)
    result = alerts.sync_alerts()
    alerts.sync_alerts()
    assert [a.id for a in result.cleared] == [alert.id]
    db.session.refresh(alert)
    assert alert.cleared_at is not None
    assert [a for a in alerts.open_alerts() if a.kind == alerts.CONSECUTIVE_FAILURES] == []
    texts = _posted(alert_hook, alerts.CONSECUTIVE_FAILURES)
    assert len(texts) == 2 and texts[1].startswith("[synchub] resolved: consecutive_failures (zoom)")


def test_a_new_streak_after_recovery_fires_a_new_alert(app, make_connection):
    conn = make_connection(name="halo")
    for status in (FAILED, FAILED, FAILED, COMPLETED, FAILED, FAILED, FAILED):
        _finished_run(conn, status)
        alerts.sync_alerts()
    history = _open(alerts.CONSECUTIVE_FAILURES)
    assert len(history) == 2 and history[0].cleared_at is not None and history[1].cleared_at is None


def test_record_runs_neither_count_as_failures_nor_as_recovery(app, make_connection):
    conn = make_connection(name="ghl", settings=TAKES_WEBHOOKS)
    for _ in range(3):
        _finished_run(conn, FAILED)
    record = runs.trigger(conn, mode="record", record_key="orders:1", trigger="webhook", enqueue=False).run
    runs.finish(record.id, runs.claim(record.id, "w"), COMPLETED)
    assert [c.subject for c in alerts.current_conditions() if c.kind == alerts.CONSECUTIVE_FAILURES] == ["ghl"]


def test_no_recent_success_is_reported_only_for_scheduled_connections(app, make_connection):
    now = utcnow()
    scheduled = make_connection(name="hourly", schedule="hourly:0")
    manual = make_connection(name="by-hand", schedule="manual")
    for conn in (scheduled, manual):
        conn.created_at = now - timedelta(days=3)
    db.session.commit()
    kinds = {(c.kind, c.subject) for c in alerts.current_conditions(now)}
    assert (alerts.NO_RECENT_SUCCESS, "hourly") in kinds and (alerts.NO_RECENT_SUCCESS, "by-hand") not in kinds
    _finished_run(scheduled, COMPLETED)
    kinds = {(c.kind, c.subject) for c in alerts.current_conditions()}
    assert (alerts.NO_RECENT_SUCCESS, "hourly") not in kinds


def test_dead_outbox_events_alert_until_none_is_dead(app):
    event = OutboxEvent(type="contact.upsert", key="a@example.com", payload={}, idempotency_key="k1", status="dead")
    db.session.add(event)
    db.session.commit()
    [condition] = [c for c in alerts.current_conditions() if c.kind == alerts.DEAD_OUTBOX]
    assert condition.message.startswith("1 outbox event(s) are dead")
    event.status = "pending"
    db.session.commit()
    assert not [c for c in alerts.current_conditions() if c.kind == alerts.DEAD_OUTBOX]


def test_stale_runs_condition_names_runs_whose_worker_stopped(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    runs.claim(run.id, "w")
    later = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    [condition] = [c for c in alerts.current_conditions(later) if c.kind == alerts.STALE_RUNS]
    assert str(run.id) in condition.message
    # Once swept (requeued) it is still reported until it has run again.
    assert runs.sweep_stale(now=later) == [(run.id, "queued")]
    assert [c for c in alerts.current_conditions(later) if c.kind == alerts.STALE_RUNS]
    runs.finish(run.id, runs.claim(run.id, "w2"), COMPLETED)
    assert not [c for c in alerts.current_conditions(later) if c.kind == alerts.STALE_RUNS]


def test_supervisor_silent_until_a_leader_ticks(app):
    now = utcnow()
    [condition] = [c for c in alerts.current_conditions(now) if c.kind == alerts.SUPERVISOR_SILENT]
    assert "no supervisor has ever run" in condition.message
    db.session.add(SupervisorState(name="s1", is_leader=False, last_tick_at=now))
    db.session.commit()
    [condition] = [c for c in alerts.current_conditions(now) if c.kind == alerts.SUPERVISOR_SILENT]
    assert "none leads" in condition.message
    db.session.execute(SupervisorState.__table__.update().values(is_leader=True))
    db.session.commit()
    assert not [c for c in alerts.current_conditions(now) if c.kind == alerts.SUPERVISOR_SILENT]
    late = now + timedelta(seconds=app.config["ALERT_SUPERVISOR_SILENT_SECONDS"] + 1)
    assert [c for c in alerts.current_conditions(late) if c.kind == alerts.SUPERVISOR_SILENT]


def test_a_failed_notification_is_retried_and_never_shows_the_webhook_url(app, make_connection, alert_hook, caplog):
    alert_hook.status["code"] = 500
    conn = make_connection(name="loops")
    for _ in range(3):
        _finished_run(conn, FAILED)
    with caplog.at_level(logging.INFO):
        alerts.sync_alerts()
        assert _posted(alert_hook, alerts.CONSECUTIVE_FAILURES) == []
    event = db.session.execute(select(OutboxEvent).where(OutboxEvent.type == "alert.fired",
                                                         OutboxEvent.key == "alerts:consecutive_failures:loops")
                               ).scalars().one()
    assert event.status == "pending" and event.attempts == 1 and "HTTP 500" in event.last_error
    assert "s3cr3t-hook-token" not in caplog.text + event.last_error
    alert_hook.status["code"] = 200
    make_due(event.id)
    assert len(_posted(alert_hook, alerts.CONSECUTIVE_FAILURES)) == 1


def test_a_run_in_progress_does_not_end_a_failure_streak(app, make_connection):
    conn = make_connection(name="busy")
    for _ in range(3):
        _finished_run(conn, FAILED)
    run = runs.trigger(conn, enqueue=False).run
    runs.claim(run.id, "w")
    assert db.session.get(type(run), run.id).status == RUNNING
    assert [c.subject for c in alerts.current_conditions() if c.kind == alerts.CONSECUTIVE_FAILURES] == ["busy"]
