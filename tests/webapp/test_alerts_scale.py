"""Alerts at scale: thousands of conditions open and clear in a bounded number of
statements, and supervisors racing over them still open each alert once, with one
notification (docs/PERFORMANCE.md, "Supervisor scale")."""
from datetime import timedelta

from sqlalchemy import event, insert, select, update

from tests.support import race_in_processes
from webapp import alerts
from webapp.extensions import db
from webapp.models import Alert, Connection, OutboxEvent, utcnow

NOW = utcnow().replace(microsecond=0) + timedelta(days=2)  # every connection made now is 2 days old by then


def _scheduled_connections(n, prefix="scale"):
    """n scheduled connections that never synced: each one is a no_recent_success condition at NOW."""
    db.session.execute(insert(Connection), [
        {"name": f"{prefix}-{i:05d}", "connector": "sandbox", "settings": {}, "schedule": "hourly:0"}
        for i in range(n)])
    db.session.commit()


def _notify_connection(make_connection):
    # Publishing only writes outbox rows; nothing is sent to this address by these tests.
    make_connection(name="slack", connector="notify", settings={"format": "slack"},
                    credentials={"url": "http://127.0.0.1:9/services/T000/B000/hook"})


class _Statements:
    def __init__(self, engine):
        self.engine, self.count = engine, 0

    def _count(self, *args):
        self.count += 1

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._count)


def _notifications(event_type):
    return db.session.scalars(select(OutboxEvent.idempotency_key).where(OutboxEvent.type == event_type)).all()


def test_two_thousand_alerts_open_and_clear_in_a_bounded_number_of_statements(app, make_connection):
    _notify_connection(make_connection)
    _scheduled_connections(2000)

    with _Statements(db.engine) as opening:
        result = alerts.sync_alerts(NOW)
    opened = [a for a in result.fired if a.kind == alerts.NO_RECENT_SUCCESS]
    assert len(opened) == 2000 and len(result.fired) == 2001  # and supervisor_silent: none ever ran here
    fired = _notifications("alert.fired")
    assert len(fired) == 2001 == len(set(fired))
    # multi-row INSERTs of alerts and of outbox rows in pages, pages of alerts read back, the
    # conditions, savepoints: 41 on both backends; one by one it was over 6,000
    assert opening.count <= 60, opening.count

    with _Statements(db.engine) as again:
        assert alerts.sync_alerts(NOW).fired == []  # still open: not announced again
    assert again.count <= 20, again.count
    assert len(_notifications("alert.fired")) == 2001

    db.session.execute(update(Connection).where(Connection.name.like("scale-%")).values(schedule="manual"))
    db.session.commit()
    with _Statements(db.engine) as clearing:
        result = alerts.sync_alerts(NOW)
    assert len(result.cleared) == 2000 and all(a.cleared_at == NOW for a in result.cleared)
    assert clearing.count <= 60, clearing.count
    assert len(set(_notifications("alert.resolved"))) == 2000
    assert db.session.scalars(select(Alert.kind).where(Alert.cleared_at.is_(None))).all() == [alerts.SUPERVISOR_SILENT]


def test_consecutive_failures_are_read_in_one_query_whatever_the_number_of_connections(app):
    _scheduled_connections(300, prefix="many")
    with _Statements(db.engine) as few:
        alerts._consecutive_failures(3)
    assert few.count == 1, few.count  # the last syncs of every connection at once


def _silent_id():
    return db.session.scalar(select(Alert.id).where(Alert.kind == alerts.SUPERVISOR_SILENT))


def _race_sync_alerts(config, barrier, results):
    from webapp import alerts as child_alerts
    from webapp import create_app

    child = create_app(config)
    with child.app_context():
        barrier.wait()
        result = child_alerts.sync_alerts(NOW)
        results.put(([(a.kind, a.subject) for a in result.fired], [(a.kind, a.subject) for a in result.cleared]))


def test_supervisors_racing_open_each_alert_once_and_clear_it_once(app, make_connection, redis):
    _notify_connection(make_connection)
    _scheduled_connections(150)
    expected = sorted((alerts.NO_RECENT_SUCCESS, f"scale-{i:05d}") for i in range(150))

    outcomes = race_in_processes(app, _race_sync_alerts, callers=4)
    fired = sorted(key for opened, _ in outcomes for key in opened if key[0] == alerts.NO_RECENT_SUCCESS)
    assert fired == expected  # each by exactly one process
    rows = db.session.execute(select(Alert.id, Alert.subject).where(Alert.kind == alerts.NO_RECENT_SUCCESS)).all()
    assert len(rows) == 150
    assert sorted(_notifications("alert.fired")) == sorted(
        [f"alert-{alert_id}-fired.0" for alert_id, _ in rows] + [f"alert-{_silent_id()}-fired.0"])

    db.session.execute(update(Connection).where(Connection.name.like("scale-%")).values(enabled=False))
    db.session.commit()
    outcomes = race_in_processes(app, _race_sync_alerts, callers=4)
    cleared = sorted(key for _, gone in outcomes for key in gone if key[0] == alerts.NO_RECENT_SUCCESS)
    assert cleared == expected
    assert sorted(_notifications("alert.resolved")) == sorted(f"alert-{alert_id}-resolved.0" for alert_id, _ in rows)
