"""Retry, discard and filters (webapp/outbox/queries.py)."""
from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    NOMINATION,
    loops,
    loops_connection,
    outbox_rows,
    vote,
)
from webapp import outbox
from webapp.extensions import db
from webapp.outbox import queries
from webapp.outbox.claim import claim, mark_done, mark_failed


def test_retry_and_discard_touch_only_pending_and_dead_events(app, make_connection, loops):
    loops_connection(make_connection, loops)
    for n in range(5):
        vote(f"voter{n}")
    db.session.commit()
    claimed = claim(db.session, "w1", limit=5)
    for c in claimed[:3]:
        mark_failed(db.session, c, "HTTP 422 nope", permanent=True)
    mark_done(db.session, claimed[3])
    dead = queries.matching_ids(db.session, status="dead")
    assert dead == [c.id for c in claimed[:3]]
    processing, done = claimed[4].id, claimed[3].id
    assert queries.retry(db.session, dead + [processing, done]) == 3
    assert [(r.status, r.attempts) for r in outbox_rows()] == [("pending", 0)] * 3 + [("done", 1), ("processing", 1)]
    assert queries.discard(db.session, [dead[0], processing, done]) == 1
    assert [r.id for r in outbox_rows()] == dead[1:] + [done, processing]
    assert queries.counts(db.session) == {"pending": 2, "processing": 1, "done": 1, "dead": 0}


def test_filters_select_by_status_type_and_key(app, make_connection, loops):
    loops_connection(make_connection, loops)
    outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION)
    vote("alice")
    db.session.commit()
    assert len(queries.matching_ids(db.session, key="alice@example.com")) == 2
    assert len(queries.matching_ids(db.session, type="vote_cast", key="alice@example.com")) == 1
    assert queries.matching_ids(db.session, status="dead") == []
    assert [r.key for r in queries.list_events(db.session, type="nomination_approved")] == [
        "alice@example.com", "bob@example.com"]
