"""The outbox sender (worker/outbox_sender.py). In-process drains against the Loops
simulator over real HTTP: how each kind of failure is settled. Then real worker processes
(RQ, forked work horses) against the simulator on a real socket: the S1 flows, a
destination outage during a burst, and a worker killed between the provider's acceptance
and the database's record of it."""
import signal
import time
from datetime import timedelta

from sqlalchemy import select

from tests.support import wait_for
from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    NOMINATION,
    drain_until,
    fast,
    loops,
    loops_connection,
    make_due,
    outbox_rows,
    outbox_workers,
    status_counts,
    vote,
    worker_env,
)
from webapp import outbox
from webapp.api.auth import create_token
from webapp.extensions import db
from webapp.models import OutboxEvent, utcnow
from webapp.outbox import queries
from worker.outbox_sender import drain
from webapp.queue import queue_name

ALICE, BOB, CAROL, DAVE, ERIN = (f"{n}@example.com" for n in ("alice", "bob", "carol", "dave", "erin"))


def _all_done(total):
    return lambda: status_counts()["done"] == total


# -- in-process drains: failures ---------------------------------------------------------


def test_transient_failures_back_off_in_the_database_then_the_event_dies_after_its_last_attempt(
        app, fast, redis, make_connection, loops):
    # A backoff far longer than the test: its passing is make_due, never a sleep.
    app.config.update(OUTBOX_MAX_ATTEMPTS=3, OUTBOX_BREAKER_THRESHOLD=100,
                      OUTBOX_BACKOFF_BASE_SECONDS=60, OUTBOX_BACKOFF_MAX_SECONDS=60)
    loops_connection(make_connection, loops)
    [event_id] = vote("carol").ids
    db.session.commit()
    loops.api.outage = 503
    before = utcnow()
    assert drain(redis_client=redis).retrying == 1
    row = outbox_rows()[0]
    assert (row.status, row.attempts) == ("pending", 1)
    assert "HTTP 503" in row.last_error and "Service unavailable" in row.last_error
    assert before + timedelta(seconds=30) <= row.next_attempt_at <= utcnow() + timedelta(seconds=60)
    assert drain(redis_client=redis).claimed == 0  # not due yet: nobody sleeps on it
    for attempt in (2, 3):
        make_due(event_id)
        drain(redis_client=redis)
        assert outbox_rows()[0].attempts == attempt
    row = outbox_rows()[0]
    assert row.status == "dead" and row.last_error.endswith("(gave up after 3 attempts)")
    assert loops.api.requests == 3 and row.id == event_id


def test_short_429_is_waited_out_in_place_and_a_long_one_reschedules_the_event(
        app, fast, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    [event_id] = vote("carol").ids
    db.session.commit()
    loops.server.faults.rate_limit(retry_after=1)
    started = time.monotonic()
    assert drain(redis_client=redis).done == 1
    assert time.monotonic() - started >= 1.0
    assert (outbox_rows()[0].attempts, [e.status for e in loops.log.entries()]) == (1, [429, 200])
    vote("dave")
    db.session.commit()
    loops.server.faults.rate_limit(retry_after=30)
    before = utcnow()
    assert drain(redis_client=redis).retrying == 1
    dave = outbox_rows()[1]
    assert dave.status == "pending" and "HTTP 429" in dave.last_error
    assert dave.next_attempt_at >= before + timedelta(seconds=30) and event_id != dave.id


def test_permanent_error_is_dead_at_once_and_retry_sends_once_the_destination_is_fixed(
        app, fast, redis, make_connection, loops):
    loops.api.known_properties = {"firstName", "lastName"}  # liveUrl and nomineeName not created yet
    loops_connection(make_connection, loops)
    ids = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION).ids
    db.session.commit()
    result = drain(redis_client=redis)
    assert (result.dead, result.retrying) == (2, 0)
    for row in outbox_rows():
        assert (row.status, row.attempts) == ("dead", 1)
        assert "HTTP 400" in row.last_error and "does not exist. Create it in Loops first." in row.last_error
    loops.api.define_property("liveUrl")
    loops.api.define_property("nomineeName")
    assert queries.retry(db.session, queries.matching_ids(db.session, status="dead")) == 2
    assert drain(redis_client=redis).done == 2
    assert [r.status for r in outbox_rows()] == ["done", "done"] and [r.id for r in outbox_rows()] == ids
    assert loops.api.contact("bob@example.com")["userGroup"] == "Nominees"
    assert loops.api.contact("alice@example.com")["userGroup"] == "Nominator Live"


# -- real worker processes -----------------------------------------------------------------


def test_s1_flows_end_to_end_through_workers_leave_contacts_exactly_as_mapped(app, make_connection, loops,
                                                                              outbox_workers):
    loops_connection(make_connection, loops)
    outbox_workers.start()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {create_token('awards-site')}"}
    published = [
        ("nomination_submitted", "nom-1", {"nominator": {"email": ALICE, "first_name": "Alice"},
                                           "nominee": {"email": BOB, "name": "Bob Stone"}}),
        ("vote_cast", "vote-1", {"voter": {"email": CAROL}}),
        ("nomination_submitted", "nom-2", {"nominator": {"email": DAVE}, "nominee": {"email": ERIN, "name": "Erin"}}),
        ("nomination_approved", "nom-1", {"nominator": {"email": ALICE}, "live_url": "https://awards.example/bob",
                                          "nominee": {"email": BOB, "name": "Bob Stone", "first_name": "Bob"}}),
        ("vote_cast", "vote-2", {"voter": {"email": DAVE}}),
    ]
    for type_, key, payload in published:
        response = client.post("/api/outbox", headers=headers, json={
            "type": type_, "key": key, "payload": payload, "idempotency_key": f"{key}-{type_}"})
        assert response.status_code == 202, response.get_json()
    # No drain is enqueued here: the real-time attempts after each commit do it all.
    wait_for(_all_done(6), timeout=30, message="the real-time attempts")

    contacts = {c["email"]: c for c in loops.api.contacts()}
    assert set(contacts) == {ALICE, BOB, CAROL, DAVE}  # erin is not approved yet: not pushed
    assert (contacts[ALICE]["userGroup"], contacts[ALICE]["firstName"], contacts[ALICE]["nomineeName"],
            contacts[ALICE]["liveUrl"]) == ("Nominator Live", "Alice", "Bob Stone", "https://awards.example/bob")
    assert (contacts[BOB]["userGroup"], contacts[BOB]["firstName"], contacts[BOB]["liveUrl"]) == (
        "Nominees", "Bob", "https://awards.example/bob")
    assert "nomineeName" not in contacts[BOB]
    assert contacts[CAROL]["userGroup"] == "Voters"
    assert contacts[DAVE]["userGroup"] == "Voters"  # voted after nominating: one group per contact
    assert loops.api.sequence(ALICE) == ["nom-1-nomination_submitted.0", "nom-1-nomination_approved.1"]
    assert loops.api.sequence(DAVE) == ["nom-2-nomination_submitted.0", "vote-2-vote_cast.0"]
    assert loops.api.duplicate_effects() == [] and loops.api.violations == 0


def test_destination_down_during_a_burst_of_1000_events_loses_nothing_and_keeps_per_key_order(
        app, make_connection, loops, outbox_workers):
    loops.api.rate_limit = None  # this test is about outages; the rate limit has its own
    loops_connection(make_connection, loops, rate_limit=[100000, 1],
                     mappings={"score_changed": [{"action": "upsert_contact", "email": "{email}",
                                                  "properties": {"score": "{score}"}}]})
    env = worker_env(OUTBOX_MAX_ATTEMPTS=20)
    for _ in range(4):
        outbox_workers.start(env=env)
    keys, per_key = 50, 20
    expected = {f"player{k}@example.com": [] for k in range(keys)}
    for n in range(keys * per_key):
        email, score = f"player{n % keys}@example.com", n // keys
        outbox.publish(db.session, "score_changed", f"score-{n}", {"email": email, "score": score},
                       idempotency_key=f"score-{n}")
        expected[email].append(f"score-{n}.0")
        if n % 20 == 19:  # the app commits every 20 events
            db.session.commit()
        if n == 259:
            wait_for(lambda: loops.api.requests > 0, timeout=30, message="the first requests")
            loops.stop()  # connection refused from here on
    wait_for(lambda: status_counts()["pending"] > 500, timeout=10, message="events to pile up")
    loops.start()
    drain_until(_all_done(1000), timeout=90, message="all 1000 events to be sent")

    for email, sequence in expected.items():
        assert loops.api.sequence(email) == sequence, email
        assert loops.api.contact(email)["score"] == per_key - 1
    assert loops.api.duplicate_effects() == []
    attempts = db.session.execute(select(OutboxEvent.attempts)).scalars().all()
    assert max(attempts) < 20  # the breaker kept most events from burning attempts


def test_worker_killed_after_sending_before_recording_is_sent_again_once_after_its_lease(
        app, make_connection, loops, outbox_workers):
    loops_connection(make_connection, loops, mappings={
        "award_won": [{"action": "send_event", "email": "{email}", "event": "award_won",
                       "event_properties": {"award": "{award}"}}]})
    doomed = outbox_workers.start(name="doomed", pause_after_send=60)
    # The survivor takes only drains (queue "default"), so the real-time job goes to the doomed one.
    outbox_workers.start(name="survivor", queues="default,low")
    published = outbox.publish(db.session, "award_won", "award-1", {"email": ALICE, "award": "Best Site"},
                               idempotency_key="award-1")
    db.session.commit()
    wait_for(lambda: loops.api.events(), timeout=30, message="the doomed worker's request to reach Loops")
    doomed.kill(signal.SIGKILL)  # Loops has the event; our row does not know it yet
    [event_id] = published.ids
    row = db.session.get(OutboxEvent, event_id)
    assert (row.status, row.attempts, row.claimed_by.split("/")[0]) == ("processing", 1, "doomed")

    drain_until(_all_done(1), timeout=30, message="the event to be claimed again after its lease")

    db.session.expire_all()
    row = db.session.get(OutboxEvent, event_id)
    assert (row.status, row.attempts, row.claimed_by.split("/")[0]) == ("done", 2, "survivor")
    sends = [e for e in loops.log.entries("/api/v1/events/send") if e.status is not None]
    assert [(e.headers.get("Idempotency-Key"), e.status) for e in sends] == [("award-1.0", 200), ("award-1.0", 409)]
    assert loops.api.events() == [(ALICE, "award_won", {"award": "Best Site"}, "award-1.0")]
    assert loops.api.duplicate_effects() == []


def test_periodic_drain_goes_on_after_the_worker_running_it_is_sigkilled(app, redis, make_connection, loops,
                                                                        outbox_workers):
    """The chaos run's outbox stall. The supervisor's periodic drain is what claims a dead
    worker's rows once their lease expires; it must not wait on the drain job that died with
    that worker (RQ still calls it "started" for 90 s)."""
    from rq import Queue

    from scheduler.supervisor import Supervisor

    loops_connection(make_connection, loops)
    [drain_step] = [s for s in Supervisor(app, name="test-supervisor").steps() if "drain" in s.name]
    # Only drains (queue "default") are served, so the periodic drain is what sends.
    doomed = outbox_workers.start(name="doomed", queues="default", pause_after_send=60)
    for n in range(4):
        outbox.publish(db.session, "vote_cast", f"vote-{n}", {"voter": {"email": f"voter{n}@example.com"}},
                       idempotency_key=f"vote-{n}")
    db.session.commit()
    Queue(queue_name("high"), connection=redis).empty()  # the real-time job would hide the drain's absence
    drain_step.func(None)
    wait_for(lambda: loops.api.contacts(), timeout=30, message="the doomed worker's drain to reach Loops")
    doomed.kill(signal.SIGKILL)  # mid-send: the drain job dies "started", its row "processing"
    outbox_workers.start(name="survivor", queues="default")

    deadline = time.monotonic() + 25  # well inside RQ's 90 s, past the 2 s lease
    while status_counts()["done"] < 4 and time.monotonic() < deadline:
        drain_step.func(None)  # the leader's periodic tick
        time.sleep(0.3)
    assert status_counts() == {"pending": 0, "processing": 0, "done": 4, "dead": 0}
    rows = db.session.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars().all()
    assert {r.claimed_by.split("/")[0] for r in rows} == {"survivor"}
    assert sorted(c["email"] for c in loops.api.contacts()) == [f"voter{n}@example.com" for n in range(4)]
    assert loops.api.duplicate_effects() == []
