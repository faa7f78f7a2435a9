"""Claims with leases, per-key order, outcomes tied to the claim, backoff
(webapp/outbox/claim.py)."""
import threading
from datetime import timedelta

from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    NOMINATION,
    fast,
    loops,
    loops_connection,
    outbox_rows,
    vote,
)
from webapp import outbox
from webapp.extensions import db
from webapp.models import utcnow
from webapp.outbox.claim import claim, mark_done, mark_failed


def test_newer_event_of_a_key_waits_while_an_older_one_is_pending_or_processing(app, fast, make_connection, loops):
    loops_connection(make_connection, loops)
    submitted = outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION).ids  # alice
    approved = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION).ids  # bob, alice
    db.session.commit()
    claimed = claim(db.session, "w1", limit=10)
    assert [c.id for c in claimed] == [submitted[0], approved[0]]  # alice's second row waits
    assert claim(db.session, "w2", limit=10) == []
    assert mark_failed(db.session, claimed[0], "HTTP 503") == outbox.PENDING
    later = utcnow() + timedelta(seconds=1)  # past the backoff, within bob's lease
    assert [c.id for c in claim(db.session, "w2", limit=10, now=later)] == [submitted[0]]


def test_dead_event_releases_its_key(app, make_connection, loops):
    loops_connection(make_connection, loops)
    submitted = outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION).ids
    approved = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION).ids
    db.session.commit()
    first = claim(db.session, "w1", limit=1)
    assert mark_failed(db.session, first[0], "HTTP 422 bad property", permanent=True) == outbox.DEAD
    assert [c.id for c in claim(db.session, "w1", limit=10)] == approved
    assert submitted[0] not in approved


def test_expired_lease_is_claimed_again_and_the_late_worker_cannot_record_an_outcome(app, make_connection, loops):
    loops_connection(make_connection, loops)
    vote("carol")
    db.session.commit()
    now = utcnow()
    [old] = claim(db.session, "w1", lease_seconds=5, now=now)
    assert claim(db.session, "w2", now=now + timedelta(seconds=4)) == []
    [new] = claim(db.session, "w2", now=now + timedelta(seconds=6))
    assert (new.id, new.attempts, old.attempts) == (old.id, 2, 1)
    assert mark_done(db.session, old) is False
    assert mark_failed(db.session, old, "late") is None
    assert mark_done(db.session, new) is True
    row = outbox_rows()[0]
    assert (row.status, row.claimed_by, row.attempts) == ("done", "w2", 2)


def test_concurrent_claimers_take_disjoint_events(app, make_connection, loops):
    loops_connection(make_connection, loops)
    for n in range(120):
        vote(f"voter{n}")
    db.session.commit()
    taken, errors = [], []

    def worker(name):
        try:
            with app.app_context():
                while True:
                    batch = claim(db.session, name, limit=7)
                    if not batch:
                        return
                    for c in batch:
                        taken.append(c.id)
                        assert mark_done(db.session, c)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(taken) == len(set(taken)) == 120
    assert {r.status for r in outbox_rows()} == {"done"}
