"""Publishing: inside the caller's transaction, one row per provider action, idempotency
keys, refused events (webapp/outbox/publish.py)."""
import threading

import pytest
from rq import Queue
from sqlalchemy import create_engine, func, select, text

from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    NOMINATION,
    loops,
    loops_connection,
    outbox_rows,
    vote,
)
from webapp import outbox
from webapp.extensions import db
from webapp.models import User
from webapp.outbox.claim import claim
from webapp.outbox.enqueue import send_job_marker
from webapp.queue import queue_name


def test_rolled_back_transaction_leaves_no_event_and_enqueues_nothing(app, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    db.session.add(User(email="app-row@example.com", password_hash="x"))  # the app's own write
    published = outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION)
    assert len(published.ids) == 1
    db.session.rollback()
    assert outbox_rows() == []
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    assert Queue(queue_name("high"), connection=redis).count == 0 and redis.get(send_job_marker()) is None


def test_event_is_invisible_to_others_until_the_callers_commit(app, make_connection, loops):
    loops_connection(make_connection, loops)
    outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION)
    other = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    try:
        with other.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM outbox_events")).scalar() == 0
        db.session.commit()
        with other.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM outbox_events")).scalar() == 1
    finally:
        other.dispose()


def test_one_app_event_becomes_one_row_per_action_keyed_by_contact(app, make_connection, loops):
    conn = loops_connection(make_connection, loops)
    published = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION, idempotency_key="nom-1-ok")
    db.session.commit()
    rows = outbox_rows()
    assert [r.id for r in rows] == published.ids
    assert [(r.key, r.idempotency_key, r.type, r.connection_id, r.status) for r in rows] == [
        ("bob@example.com", "nom-1-ok.0", "nomination_approved", conn.id, "pending"),
        ("alice@example.com", "nom-1-ok.1", "nomination_approved", conn.id, "pending"),
    ]
    assert rows[1].payload == {"action": "upsert_contact", "body": {
        "email": "alice@example.com", "userGroup": "Nominator Live", "nomineeName": "Bob Stone",
        "liveUrl": "https://awards.example/bob"}}


def test_duplicate_idempotency_key_is_accepted_once(app, make_connection, loops):
    loops_connection(make_connection, loops)
    first = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION, idempotency_key="nom-1-approved")
    db.session.commit()
    again = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION, idempotency_key="nom-1-approved")
    db.session.commit()
    assert (again.duplicate, again.ids) == (True, first.ids)
    assert len(outbox_rows()) == 2
    # Keys that merely look alike are other events: another case, or this key plus a suffix.
    others = [vote("x", idempotency_key=k).ids[0] for k in ("NOM-1-APPROVED", "nom-1-approved.0")]
    db.session.commit()
    repeat = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION, idempotency_key="nom-1-approved")
    assert (repeat.duplicate, repeat.ids) == (True, first.ids) and len(outbox_rows()) == 4 and others[0] != others[1]


def test_racing_duplicates_from_many_processes_write_one_event(app, make_connection, loops):
    loops_connection(make_connection, loops)
    results, errors = [], []
    start = threading.Barrier(5)

    def publish_once():
        try:
            with app.app_context():
                start.wait()
                results.append(vote("erin", idempotency_key="vote-erin-1"))
                db.session.commit()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=publish_once) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(outbox_rows()) == 1
    assert sorted(r.duplicate for r in results) == [False, True, True, True, True]
    assert {tuple(r.ids) for r in results} == {(outbox_rows()[0].id,)}


@pytest.mark.parametrize("type_, payload, idempotency_key, reason", [
    ("unknown_event", {}, None, "no destination maps event type 'unknown_event'"),
    ("nomination_approved", {"nominator": {"email": "a@example.com"}, "live_url": "u"}, None,
     r"nomination_approved'\] rule 1\.email: the event has no field 'nominee\.email'"),
    ("vote_cast", {"voter": {"email": "not-an-email"}}, None, "is not an email address"),
    ("vote_cast", {"voter": {"email": "v@example.com"}}, "k" * 81, "idempotency_key must be"),
    ("vote_cast", ["not", "an", "object"], None, "payload must be a JSON object"),
])
def test_bad_events_are_refused_with_a_clear_reason_and_write_nothing(app, make_connection, loops, type_, payload,
                                                                     idempotency_key, reason):
    loops_connection(make_connection, loops)
    with pytest.raises(outbox.PublishError, match=reason):
        outbox.publish(db.session, type_, "k-1", payload, idempotency_key=idempotency_key)
    db.session.commit()
    assert outbox_rows() == []


def test_disabled_destination_gets_no_new_events_and_is_not_sent_to(app, make_connection, loops):
    conn = loops_connection(make_connection, loops)
    vote("carol")
    db.session.commit()
    conn.enabled = False
    db.session.commit()
    with pytest.raises(outbox.PublishError, match="no destination"):
        vote("dave")
    assert claim(db.session, "w1", limit=10) == []
