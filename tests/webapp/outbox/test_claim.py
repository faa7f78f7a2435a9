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


def test_a_claim_reads_the_index_of_unsent_rows_not_every_row_ever_sent(app, make_connection, loops):
    """The claim states the partial indexes' condition word for word, so the database can
    answer it from the rows still to send; a claim that walked the sent rows cost 12 ms per
    50 events on SQLite and 55 on PostgreSQL with 2,000 rows sent (docs/PERFORMANCE.md)."""
    from sqlalchemy import event

    loops_connection(make_connection, loops)
    vote("carol")
    db.session.commit()
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "outbox_events AS cand" in statement:
            statements.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        assert len(claim(db.session, "w1", limit=5)) == 1
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    [(statement, parameters)] = statements
    cursor = db.session.connection().connection.cursor()
    if db.engine.dialect.name == "sqlite":
        cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        plan = "\n".join(row[3] for row in cursor.fetchall())
        db.session.rollback()
        # Unsent rows in id order, stopping at the batch's last; no sort of every due row.
        assert "SCAN cand USING INDEX ix_outbox_events_unsent\n" in plan + "\n", plan
        assert "SEARCH older USING INDEX ix_outbox_events_unsent_key" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a table this small is read whole otherwise
        cursor.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        db.session.rollback()
        # Which of the two it picks is the planner's business (statistics); that it may read
        # only the unsent rows is the claim's.
        assert "ix_outbox_events_unsent" in plan, plan
        # (The claim's UPDATE then finds the picked rows by primary key.)
        for reads_every_row in ("Seq Scan on outbox_events", "ix_outbox_events_key_id",
                                "ix_outbox_events_status_next"):
            assert reads_every_row not in plan, plan
