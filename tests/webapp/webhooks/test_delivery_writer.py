"""Committing deliveries through the group-commit writer: rows that arrive while the
database is busy go in together, duplicates within a batch are counted, and a row the
database refuses fails alone. The database is made busy for real: another connection holds
the write lock."""
import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import create_engine, func, select

from webapp.extensions import db
from webapp.models import WebhookDelivery
from webapp.webhooks import delivery_writer


class WriteLockHolder:
    """Another session holding the lock an INSERT into webhook_deliveries needs."""

    def __init__(self, url):
        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.connection = self.engine.connect()

    def __enter__(self):
        if self.engine.dialect.name == "sqlite":
            self.connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            self.connection.exec_driver_sql("BEGIN")
            self.connection.exec_driver_sql("LOCK TABLE webhook_deliveries IN SHARE ROW EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc):
        self.connection.exec_driver_sql("COMMIT")
        self.connection.close()
        self.engine.dispose()


def _submit_all(app, rows):
    """Each row from its own thread; returns {index: result or exception}."""
    outcomes = {}

    def submit(index, connection_id, event_id):
        with app.app_context():
            try:
                outcomes[index] = delivery_writer.insert_delivery(connection_id, event_id, "item.updated",
                                                        datetime.now(timezone.utc).replace(tzinfo=None), {}, b"{}")
            except delivery_writer.DeliveryNotStored as exc:
                outcomes[index] = exc

    threads = [threading.Thread(target=submit, args=(index, *row)) for index, row in enumerate(rows)]
    return threads, outcomes


def _wait_writing_alone(writer, timeout=20):
    """Until a thread has taken the only turn and its batch (of one) is out of the queue."""
    deadline = time.monotonic() + timeout
    while writer._free or writer._queued:
        assert time.monotonic() < deadline, "the first row was not taken"
        time.sleep(0.01)


def _wait_queued(writer, count, timeout=20):
    deadline = time.monotonic() + timeout
    while len(writer._queued) < count:
        assert time.monotonic() < deadline, f"only {len(writer._queued)} of {count} rows queued"
        time.sleep(0.01)


def _stored_count():
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(WebhookDelivery))


def test_rows_arriving_while_the_database_is_busy_go_in_as_one_batch(app, make_connection):
    app.config["WEBHOOK_DB_WRITERS"] = 1
    shop = make_connection(name="shop")
    with app.app_context():
        writer = delivery_writer.writer()
    rows = [(shop.id, "first")] + [(shop.id, f"evt-{n}") for n in range(20)] + [(shop.id, "evt-7")]
    threads, outcomes = _submit_all(app, rows)
    with WriteLockHolder(app.config["SQLALCHEMY_DATABASE_URI"]):
        threads[0].start()
        _wait_writing_alone(writer)  # the first row's thread now waits for the lock, its batch of one
        for thread in threads[1:]:
            thread.start()
        _wait_queued(writer, 21)
        assert outcomes == {}  # nothing answered while nothing can be committed
    for thread in threads:
        thread.join(30)

    assert writer.batches == 2  # the first row alone, then the 21 that queued behind it
    assert _stored_count() == 21
    ids = {index: outcome for index, outcome in outcomes.items()}
    assert all(not isinstance(outcome, Exception) for outcome in ids.values())
    stored = [delivery_id for delivery_id, duplicate in ids.values() if not duplicate]
    assert len(stored) == len(set(stored)) == 21
    duplicates = [(index, delivery_id) for index, (delivery_id, duplicate) in ids.items() if duplicate]
    assert len(duplicates) == 1 and duplicates[0][0] in (8, 21)  # one of the two evt-7 rows
    original = ids[21 if duplicates[0][0] == 8 else 8][0]
    assert duplicates[0][1] == original
    assert db.session.get(WebhookDelivery, original).duplicates == 1


def test_a_row_the_database_refuses_fails_alone(app, make_connection):
    app.config["WEBHOOK_DB_WRITERS"] = 1
    shop = make_connection(name="shop")
    with app.app_context():
        writer = delivery_writer.writer()
    no_such_connection = shop.id + 1000
    rows = [(shop.id, "first"), (shop.id, "good-1"), (no_such_connection, "bad"), (shop.id, "good-2")]
    threads, outcomes = _submit_all(app, rows)
    with WriteLockHolder(app.config["SQLALCHEMY_DATABASE_URI"]):
        threads[0].start()
        _wait_writing_alone(writer)
        for thread in threads[1:]:
            thread.start()
        _wait_queued(writer, 3)
    for thread in threads:
        thread.join(30)

    assert isinstance(outcomes[2], delivery_writer.DeliveryNotStored)  # the foreign key refused it
    assert "foreign key" in str(outcomes[2]).lower()
    for index in (0, 1, 3):
        assert outcomes[index][1] is False
    assert _stored_count() == 3
    assert writer.batches == 2


@pytest.mark.parametrize("writers", [1, 3])
def test_many_threads_each_get_their_own_row_once(app, make_connection, writers):
    app.config["WEBHOOK_DB_WRITERS"] = writers
    shop = make_connection(name="shop")
    rows = [(shop.id, f"evt-{n % 80}") for n in range(160)]  # every event id twice
    threads, outcomes = _submit_all(app, rows)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(outcomes) == 160
    by_event = {}
    for index, (delivery_id, duplicate) in outcomes.items():
        by_event.setdefault(rows[index][1], []).append((delivery_id, duplicate))
    for event_id, answers in by_event.items():
        assert sorted(duplicate for _id, duplicate in answers) == [False, True], event_id
        assert answers[0][0] == answers[1][0], event_id
    assert _stored_count() == 80
    with app.app_context():
        assert delivery_writer.writer()._free == writers  # every turn handed back
