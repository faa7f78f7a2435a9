"""A claimed batch's requests side by side (worker/outbox_sender.py, docs/OUTBOX.md "Sending"):
how many are in flight at once, per-key order and the shared rate limit with several in
flight, and the half-open breaker's single probe. In-process drains against the Loops
simulator over real HTTP; the simulator is wrapped in a gate that counts the requests in
flight, so concurrency is observed where it happens: at the provider."""
import threading
import time

import sqlalchemy

from tests.simulators.loops import LoopsAPI
from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    end_breaker_cooldown,
    fast,
    loops_connection,
    outbox_rows,
    vote,
)
from webapp import outbox
from webapp.extensions import db
from webapp.outbox.breaker import Breaker
from worker.outbox_pace import FIRST_BATCH
from worker.outbox_sender import drain

SCORES = {"score_changed": [{"action": "upsert_contact", "email": "{email}", "properties": {"score": "{score}"}}]}


class Gate:
    """In front of LoopsAPI: counts the requests in flight and records, per request, how many
    were in flight when it arrived and the order of arrivals and answers. With `hold_until`
    set, a request waits (up to 10 s) until that many are in flight, so a test observes
    concurrency by a condition, not by timing. With `lone_first` (seconds), the first request
    waits that long for a second one to arrive: a sender that sent them together shows it
    (a correct one only pays the wait)."""

    def __init__(self, api, hold_until=None, lone_first=None, first_waits_for=None):
        self.api = api
        self.keep_alive = True
        self.hold_until = hold_until
        self.lone_first = lone_first
        # A condition the first request waits for (up to 10 s), and whether it came true.
        self.first_waits_for = first_waits_for
        self.condition_met = None
        self.in_flight = 0
        self.most = 0
        self.events = []  # ("arrived" | "answered", in flight after the change)
        self._cond = threading.Condition()

    def __call__(self, environ, start_response):
        with self._cond:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.events.append(("arrived", self.in_flight))
            self._cond.notify_all()
            if self.hold_until:
                self._cond.wait_for(lambda: self.in_flight >= self.hold_until or self.most >= self.hold_until,
                                    timeout=10)
            if self.lone_first and len(self.events) == 1:
                self._cond.wait_for(lambda: self.in_flight > 1, timeout=self.lone_first)
            first = len(self.events) == 1
        if first and self.first_waits_for is not None:
            deadline = time.monotonic() + 10
            while not self.first_waits_for() and time.monotonic() < deadline:
                time.sleep(0.02)
            self.condition_met = bool(self.first_waits_for())
        try:
            return self.api(environ, start_response)
        finally:
            with self._cond:
                self.in_flight -= 1
                self.events.append(("answered", self.in_flight))


def _publish_scores(connection_id, contacts, per_contact):
    """per_contact score changes for each of `contacts` contacts, interleaved; returns
    {email: [idempotency keys in publish order]}."""
    expected = {}
    for round_ in range(per_contact):
        for n in range(contacts):
            email = f"contact{n}@example.com"
            key = f"score-{n}-{round_}"
            outbox.publish(db.session, "score_changed", key, {"email": email, "score": round_},
                           idempotency_key=key, connection=connection_id)
            expected.setdefault(email, []).append(f"{key}.0")
    db.session.commit()
    return expected


class _Sim:
    def __init__(self, server):
        self.url = server.url


def test_a_healthy_destination_gets_a_batch_side_by_side_never_more_than_the_breaker_threshold(
        app, fast, redis, make_connection, serve):
    app.config.update(OUTBOX_SEND_CONCURRENCY=8, OUTBOX_BREAKER_THRESHOLD=4, OUTBOX_CLAIM_BATCH=20,
                      OUTBOX_LEASE_SECONDS=120)
    gate = Gate(LoopsAPI(rate_limit=None), hold_until=4)
    server = serve(gate)
    connection = loops_connection(make_connection, _Sim(server), mappings=SCORES, rate_limit=[1000, 1])
    _publish_scores(connection.id, contacts=20, per_contact=1)
    result = drain(redis_client=redis)
    assert (result.claimed, result.done) == (20, 20)
    # Four at once (the gate let none through before four had arrived), never more: the
    # breaker's threshold bounds the requests in flight, so an outage costs no more attempts
    # than one request at a time did.
    assert gate.most == 4
    assert all(row.attempts == 1 for row in outbox_rows())


def test_side_by_side_keeps_per_key_order_and_the_shared_rate_limit(app, fast, redis, make_connection, serve):
    app.config.update(OUTBOX_SEND_CONCURRENCY=5, OUTBOX_BREAKER_THRESHOLD=5, OUTBOX_CLAIM_BATCH=50,
                      OUTBOX_LEASE_SECONDS=120)
    api = LoopsAPI(rate_limit=(5, 0.5))  # what the provider enforces: 429s counted as violations
    gate = Gate(api, hold_until=3)  # the first requests wait for each other: they overlap
    server = serve(gate)
    connection = loops_connection(make_connection, _Sim(server), mappings=SCORES, rate_limit=[5, 0.5])
    expected = _publish_scores(connection.id, contacts=6, per_contact=5)
    result = drain(redis_client=redis)
    assert (result.done, result.dead, result.retrying) == (30, 0, 0)
    assert api.violations == 0 and api.requests == 30
    for email, keys in expected.items():
        assert api.sequence(email) == keys  # each contact's changes landed in publish order
    assert 3 <= gate.most <= 5


def test_a_half_open_breaker_sends_its_probe_alone_then_the_rest(app, fast, redis, make_connection, serve):
    app.config.update(OUTBOX_SEND_CONCURRENCY=5, OUTBOX_BREAKER_THRESHOLD=2, OUTBOX_BREAKER_COOLDOWN_SECONDS=60,
                      OUTBOX_CLAIM_BATCH=10, OUTBOX_LEASE_SECONDS=120)
    gate = Gate(LoopsAPI(rate_limit=None), lone_first=2)
    server = serve(gate)
    destination = loops_connection(make_connection, _Sim(server), rate_limit=[1000, 1]).id
    for n in range(10):
        vote(f"voter{n}")
    db.session.commit()
    breaker = Breaker.from_config(redis, app.config)
    breaker.failure(destination)
    assert breaker.failure(destination)  # open
    end_breaker_cooldown(redis, destination)  # half-open: the next claimer probes
    result = drain(redis_client=redis)
    assert result.done == 10
    # The probe went alone and came back before any other request started; the rest of
    # that batch then went one at a time too (the breaker had just been in trouble).
    assert gate.events[:2] == [("arrived", 1), ("answered", 0)]
    assert gate.most == 1


def test_a_failure_during_a_side_by_side_batch_leaves_the_rest_to_the_breaker(
        app, fast, redis, make_connection, serve):
    """The destination fails everything: the requests in flight when it started failing are
    at most the threshold, so the breaker opens after `threshold` attempts, as one at a time."""
    app.config.update(OUTBOX_SEND_CONCURRENCY=8, OUTBOX_BREAKER_THRESHOLD=3, OUTBOX_BREAKER_COOLDOWN_SECONDS=60,
                      OUTBOX_CLAIM_BATCH=20, OUTBOX_LEASE_SECONDS=120)
    api = LoopsAPI(rate_limit=None)
    api.outage = 503
    gate = Gate(api)
    server = serve(gate)
    loops_connection(make_connection, _Sim(server), rate_limit=[1000, 1])
    for n in range(12):
        vote(f"voter{n}")
    db.session.commit()
    result = drain(redis_client=redis)
    assert api.requests == 3 and gate.most <= 3
    # A drain's first batch is FIRST_BATCH (10) of the 12 rows (worker/outbox_pace.py): 3
    # attempts, the 7 others given back; the 2 left are not claimed while the breaker is open.
    assert (result.claimed, result.retrying, result.released) == (FIRST_BATCH, 3, FIRST_BATCH - 3)
    assert sorted(r.attempts for r in outbox_rows()) == [0] * 9 + [1] * 3


def _drain_holding_the_first_request_until_the_next_batch_is_claimed(app, redis, make_connection, serve):
    """Drain 30 rows (10 contacts, 3 changes each) in batches of 5, the first request answered
    only once ten rows are processing: its own batch and the next, claimed while this one is
    sent. Returns (gate, api, result, {email: keys in publish order})."""
    engine = sqlalchemy.create_engine(app.config["SQLALCHEMY_DATABASE_URI"])

    def next_batch_claimed():
        with engine.connect() as connection:
            return connection.scalar(sqlalchemy.text(
                "SELECT count(*) FROM outbox_events WHERE status = 'processing'")) == 10

    api = LoopsAPI(rate_limit=None)
    gate = Gate(api, first_waits_for=next_batch_claimed)
    server = serve(gate)
    connection = loops_connection(make_connection, _Sim(server), mappings=SCORES, rate_limit=[1000, 1])
    expected = _publish_scores(connection.id, contacts=10, per_contact=3)
    try:
        result = drain(redis_client=redis)
    finally:
        engine.dispose()
    return gate, api, result, expected


def test_the_next_batch_is_claimed_while_the_last_requests_are_in_flight_and_keeps_per_key_order(
        app, fast, redis, make_connection, serve):
    app.config.update(OUTBOX_SEND_CONCURRENCY=5, OUTBOX_BREAKER_THRESHOLD=5, OUTBOX_CLAIM_BATCH=5,
                      OUTBOX_LEASE_SECONDS=120)
    gate, api, result, expected = _drain_holding_the_first_request_until_the_next_batch_is_claimed(
        app, redis, make_connection, serve)
    assert gate.condition_met is True
    assert (result.claimed, result.done) == (30, 30)
    for email, keys in expected.items():
        assert api.sequence(email) == keys  # the batch claimed ahead never overtook a key


def test_one_at_a_time_the_next_batch_is_claimed_while_this_one_is_sent_and_keeps_per_key_order(
        app, fast, redis, make_connection, serve):
    """One at a time (OUTBOX_SEND_CONCURRENCY 1, or a drain the pace sent that way), the
    bookkeeper thread claims the next batch while the drain sends this one, and writes this
    one's successes while it sends the next (worker/outbox_sender.py, _claim_ahead)."""
    app.config.update(OUTBOX_SEND_CONCURRENCY=1, OUTBOX_CLAIM_BATCH=5, OUTBOX_LEASE_SECONDS=120)
    gate, api, result, expected = _drain_holding_the_first_request_until_the_next_batch_is_claimed(
        app, redis, make_connection, serve)
    assert gate.condition_met is True and gate.most == 1
    assert (result.claimed, result.done, result.lost) == (30, 30, 0)  # every success written and counted
    assert all(row.status == "done" for row in outbox_rows())
    for email, keys in expected.items():
        assert api.sequence(email) == keys  # a batch claimed ahead never overtook a key
