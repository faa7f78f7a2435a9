"""Retention deletes only what is older than its window, and never an active run."""
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from webapp import retention, runs
from webapp.extensions import db
from webapp.models import (
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    OutboxEvent,
    Record,
    Run,
    RunEvent,
    SupervisorState,
    WebhookDelivery,
    utcnow,
)

DAYS = 30


def _run(conn, status, *, age_days, events=2, mode="full"):
    """A run that finished (or, if active, was created) `age_days` ago, with old events."""
    at = utcnow() - timedelta(days=age_days)
    run = Run(connection_id=conn.id, status=status, mode=mode, trigger="api", created_at=at,
              record_key="items:1" if mode == "record" else None,
              finished_at=at if status not in (QUEUED, RUNNING) else None,
              heartbeat_at=at if status == RUNNING else None)
    db.session.add(run)
    db.session.flush()
    for i in range(events):
        db.session.add(RunEvent(run_id=run.id, created_at=at, message=f"line {i}"))
    db.session.commit()
    return run.id


def _ids(model):
    return set(db.session.execute(select(model.id)).scalars())


def test_retention_removes_only_what_is_older_than_the_window_and_never_an_active_run(app, make_connection):
    conn = make_connection(name="a")
    other = make_connection(name="b")
    old_done = _run(conn, COMPLETED, age_days=DAYS + 5)
    old_failed = _run(conn, FAILED, age_days=DAYS + 1)
    just_inside = _run(conn, COMPLETED, age_days=DAYS - 1)
    old_running = _run(conn, RUNNING, age_days=DAYS + 10)  # a 40-day-old run still going: kept
    old_queued_record = _run(conn, QUEUED, age_days=DAYS + 10, mode="record")
    latest_of_b = _run(other, COMPLETED, age_days=DAYS + 100)  # b's only run: the dashboard shows it
    # Old events of a recent run go; recent events stay.
    recent_run = runs.trigger(make_connection(name="c"), enqueue=False).run.id
    runs.finish(recent_run, runs.claim(recent_run, "w"), COMPLETED)
    db.session.add(RunEvent(run_id=recent_run, created_at=utcnow() - timedelta(days=DAYS + 2), message="old line"))
    db.session.add(Record(connection_id=conn.id, stream="items", external_id="1", data={}, content_hash="x",
                          last_run_id=old_done, first_seen_at=utcnow() - timedelta(days=400)))
    now = utcnow()
    for i, (age, outcome) in enumerate(((DAYS + 1, "processed"), (DAYS - 1, "processed"), (DAYS + 3, "failed"))):
        db.session.add(WebhookDelivery(connection_id=conn.id, provider_event_id=f"e{i}", raw_body=b"{}",
                                       received_at=now - timedelta(days=age), outcome=outcome))
    for i, (status, age) in enumerate((("done", DAYS + 1), ("done", 1), ("dead", DAYS + 9), ("pending", DAYS + 9))):
        at = now - timedelta(days=age)
        db.session.add(OutboxEvent(type="t", key="k", idempotency_key=f"i{i}", status=status,
                                   created_at=at, updated_at=at, delivered_at=at if status == "done" else None))
    db.session.add(SupervisorState(name="gone", last_tick_at=now - timedelta(days=8)))
    db.session.add(SupervisorState(name="here", last_tick_at=now))
    db.session.commit()
    events_before = db.session.scalar(select(func.count()).select_from(RunEvent))

    counts = retention.cleanup(now)

    assert _ids(Run) == {just_inside, old_running, old_queued_record, latest_of_b, recent_run}
    assert counts["runs"] == 2
    remaining_events = db.session.execute(select(RunEvent.run_id, RunEvent.message)).all()
    assert ("old line" not in [m for _, m in remaining_events])
    assert {run_id for run_id, _ in remaining_events} >= {old_running, old_queued_record}  # active runs keep their log
    assert not {run_id for run_id, _ in remaining_events} & {old_done, old_failed}
    assert counts["run_events"] == events_before - len(remaining_events)
    assert sorted(d.provider_event_id for d in db.session.execute(select(WebhookDelivery)).scalars()) == ["e1"]
    assert sorted(e.idempotency_key for e in db.session.execute(select(OutboxEvent)).scalars()) == ["i1", "i2", "i3"]
    assert [s.name for s in db.session.execute(select(SupervisorState)).scalars()] == ["here"]
    assert db.session.scalar(select(func.count()).select_from(Record)) == 1  # synced data is never retention's
    assert counts == {"runs": 2, "run_events": counts["run_events"], "webhook_deliveries": 2,
                      "outbox_events": 1, "supervisors": 1, "hourly_rollups": counts["hourly_rollups"]}
    assert retention.cleanup(now) == dict.fromkeys(counts, 0)  # nothing left to do


def test_retention_deletes_in_batches(app, make_connection):
    conn = make_connection()
    ids = [_run(conn, COMPLETED, age_days=DAYS + 1, events=1) for _ in range(7)]
    counts = retention.cleanup(batch_size=2)
    assert counts["runs"] == 6 and counts["run_events"] == 7  # the kept run's old log line goes too
    assert _ids(Run) == {ids[-1]}  # the connection's latest run is kept


def test_windows_are_configurable_per_kind(app, make_connection):
    conn = make_connection()
    ten_days = _run(conn, COMPLETED, age_days=10)
    latest = _run(conn, COMPLETED, age_days=1)
    assert retention.cleanup(runs=30)["runs"] == 0
    app.config["RETENTION_RUNS_DAYS"] = 7
    assert retention.cleanup()["runs"] == 1
    assert _ids(Run) == {latest} and ten_days not in _ids(Run)


@pytest.mark.parametrize("days", [0, -1])
def test_a_window_that_would_delete_everything_is_refused(app, days):
    with pytest.raises(ValueError, match="positive number of days"):
        retention.cleanup(runs=days)
