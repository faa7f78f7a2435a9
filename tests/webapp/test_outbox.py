"""The outbox's rules: publish inside the caller's transaction, claims with leases, per-key
order, backoff, dead letters, retry and discard, and the breaker. Deliveries here run
in-process (worker.delivery.drain) against the Loops simulator over real HTTP."""
import threading
import time
from datetime import timedelta

import pytest
from rq import Queue
from sqlalchemy import create_engine, func, select, text

from tests.outbox_support import FAST, loops, loops_connection  # noqa: F401  (fixture)
from webapp import outbox
from webapp.extensions import db
from webapp.models import OutboxEvent, User, utcnow
from webapp.queue import queue_name
from worker.delivery import drain

NOMINATION = {
    "nominator": {"email": "alice@example.com", "first_name": "Alice"},
    "nominee": {"email": "bob@example.com", "name": "Bob Stone"},
    "live_url": "https://awards.example/bob",
}


@pytest.fixture
def fast(app):
    app.config.update(FAST)


def _rows():
    db.session.rollback()
    return db.session.execute(select(OutboxEvent).order_by(OutboxEvent.id)).scalars().all()


def _vote(voter, idempotency_key=None):
    return outbox.publish(db.session, "vote_cast", f"vote-{voter}", {"voter": {"email": f"{voter}@example.com"}},
                          idempotency_key=idempotency_key)


# -- publishing --------------------------------------------------------------------------


def test_rolled_back_transaction_leaves_no_event_and_enqueues_nothing(app, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    db.session.add(User(email="app-row@example.com", password_hash="x"))  # the app's own write
    published = outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION)
    assert len(published.ids) == 1
    db.session.rollback()
    assert _rows() == []
    assert db.session.scalar(select(func.count()).select_from(User)) == 0
    assert Queue(queue_name("high"), connection=redis).count == 0 and redis.get(outbox.KICK_KEY) is None


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


def test_commit_enqueues_one_delivery_job_and_a_queued_job_covers_later_commits(app, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    first = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION)
    db.session.commit()
    queue = Queue(queue_name("high"), connection=redis)
    jobs = queue.jobs
    assert [(j.func_name, j.args) for j in jobs] == [("worker.jobs.deliver_event", (first.ids[0],))]
    _vote("carol")
    db.session.commit()
    assert queue.count == 1  # the queued job has not started: it will claim carol's row too
    redis.delete(outbox.KICK_KEY)  # what the job does when it starts
    second = _vote("dave")
    db.session.commit()
    assert [j.args for j in queue.jobs] == [(first.ids[0],), (second.ids[0],)]


def test_a_flag_left_by_a_job_whose_worker_died_does_not_hold_back_deliveries(app, redis, make_connection, loops):
    """A job clears its flag when it starts; a worker killed after popping the job (RQ leaves
    it 'queued' in its intermediate list) or after starting it but before the job cleared
    the flag, left a flag that stopped every delivery job, and the periodic drain's, from
    being enqueued until the flag's TTL ran out."""
    from rq.job import JobStatus

    loops_connection(make_connection, loops)
    for flag, name, enqueue in ((outbox.KICK_KEY, "high", lambda: outbox.request_delivery(1)),
                                (outbox.DRAIN_KICK_KEY, "default", outbox.enqueue_drain)):
        queue = Queue(queue_name(name), connection=redis)
        assert enqueue()
        assert not enqueue()  # waiting in its queue: it will claim after any later commit
        assert queue.count == 1
        job, _ = Queue.dequeue_any([queue], None, connection=redis)  # what a worker does first...
        assert job.get_status() == JobStatus.QUEUED and redis.exists(flag)  # ...and dies here
        assert enqueue()
        assert queue.count == 1 and queue.jobs[0].id != job.id
        popped, _ = Queue.dequeue_any([queue], None, connection=redis)
        popped.set_status(JobStatus.STARTED)  # started; killed before the job cleared the flag
        queue.intermediate_queue.remove(popped.id)
        assert enqueue()
        assert queue.count == 1 and queue.jobs[0].id not in (job.id, popped.id)
        assert not enqueue()


def test_one_app_event_becomes_one_row_per_action_keyed_by_contact(app, make_connection, loops):
    conn = loops_connection(make_connection, loops)
    published = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION, idempotency_key="nom-1-ok")
    db.session.commit()
    rows = _rows()
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
    assert len(_rows()) == 2
    # Keys that merely look alike are other events: another case, or this key plus a suffix.
    others = [_vote("x", idempotency_key=k).ids[0] for k in ("NOM-1-APPROVED", "nom-1-approved.0")]
    db.session.commit()
    repeat = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION, idempotency_key="nom-1-approved")
    assert (repeat.duplicate, repeat.ids) == (True, first.ids) and len(_rows()) == 4 and others[0] != others[1]


def test_racing_duplicates_from_many_processes_write_one_event(app, make_connection, loops):
    loops_connection(make_connection, loops)
    results, errors = [], []
    start = threading.Barrier(5)

    def publish_once():
        try:
            with app.app_context():
                start.wait()
                results.append(_vote("erin", idempotency_key="vote-erin-1"))
                db.session.commit()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=publish_once) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(_rows()) == 1
    assert sorted(r.duplicate for r in results) == [False, True, True, True, True]
    assert {tuple(r.ids) for r in results} == {(_rows()[0].id,)}


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
    assert _rows() == []


def test_disabled_destination_gets_no_new_events_and_is_not_delivered_to(app, make_connection, loops):
    conn = loops_connection(make_connection, loops)
    _vote("carol")
    db.session.commit()
    conn.enabled = False
    db.session.commit()
    with pytest.raises(outbox.PublishError, match="no destination"):
        _vote("dave")
    assert outbox.claim(db.session, "w1", limit=10) == []


# -- claiming ---------------------------------------------------------------------------


def test_newer_event_of_a_key_waits_while_an_older_one_is_pending_or_processing(app, fast, make_connection, loops):
    loops_connection(make_connection, loops)
    submitted = outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION).ids  # alice
    approved = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION).ids  # bob, alice
    db.session.commit()
    claimed = outbox.claim(db.session, "w1", limit=10)
    assert [c.id for c in claimed] == [submitted[0], approved[0]]  # alice's second row waits
    assert outbox.claim(db.session, "w2", limit=10) == []
    assert outbox.mark_failed(db.session, claimed[0], "HTTP 503") == outbox.PENDING
    later = utcnow() + timedelta(seconds=1)  # past the backoff, within bob's lease
    assert [c.id for c in outbox.claim(db.session, "w2", limit=10, now=later)] == [submitted[0]]


def test_dead_event_releases_its_key(app, make_connection, loops):
    loops_connection(make_connection, loops)
    submitted = outbox.publish(db.session, "nomination_submitted", "nom-1", NOMINATION).ids
    approved = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION).ids
    db.session.commit()
    first = outbox.claim(db.session, "w1", limit=1)
    assert outbox.mark_failed(db.session, first[0], "HTTP 422 bad property", permanent=True) == outbox.DEAD
    assert [c.id for c in outbox.claim(db.session, "w1", limit=10)] == approved
    assert submitted[0] not in approved


def test_expired_lease_is_claimed_again_and_the_late_worker_cannot_record_an_outcome(app, make_connection, loops):
    loops_connection(make_connection, loops)
    _vote("carol")
    db.session.commit()
    now = utcnow()
    [old] = outbox.claim(db.session, "w1", lease_seconds=5, now=now)
    assert outbox.claim(db.session, "w2", now=now + timedelta(seconds=4)) == []
    [new] = outbox.claim(db.session, "w2", now=now + timedelta(seconds=6))
    assert (new.id, new.attempts, old.attempts) == (old.id, 2, 1)
    assert outbox.mark_done(db.session, old) is False
    assert outbox.mark_failed(db.session, old, "late") is None
    assert outbox.mark_done(db.session, new) is True
    row = _rows()[0]
    assert (row.status, row.claimed_by, row.attempts) == ("done", "w2", 2)


def test_concurrent_claimers_take_disjoint_events(app, make_connection, loops):
    loops_connection(make_connection, loops)
    for n in range(120):
        _vote(f"voter{n}")
    db.session.commit()
    taken, errors = [], []

    def worker(name):
        try:
            with app.app_context():
                while True:
                    batch = outbox.claim(db.session, name, limit=7)
                    if not batch:
                        return
                    for c in batch:
                        taken.append(c.id)
                        assert outbox.mark_done(db.session, c)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(taken) == len(set(taken)) == 120
    assert {r.status for r in _rows()} == {"done"}


# -- failures --------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter(app, fast):
    app.config.update(OUTBOX_BACKOFF_BASE_SECONDS=10, OUTBOX_BACKOFF_MAX_SECONDS=300)
    for attempts, ceiling in ((1, 10), (2, 20), (4, 80), (9, 300)):
        samples = [outbox.backoff_seconds(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert max(samples) - min(samples) > ceiling / 10  # jittered, not one fixed delay


def test_transient_failures_back_off_in_the_database_then_the_event_dies_after_its_last_attempt(
        app, fast, redis, make_connection, loops):
    app.config.update(OUTBOX_MAX_ATTEMPTS=3, OUTBOX_BREAKER_THRESHOLD=100,
                      OUTBOX_BACKOFF_BASE_SECONDS=0.5, OUTBOX_BACKOFF_MAX_SECONDS=0.5)
    loops_connection(make_connection, loops)
    [event_id] = _vote("carol").ids
    db.session.commit()
    loops.api.outage = 503
    before = utcnow()
    assert drain(redis_client=redis).retrying == 1
    row = _rows()[0]
    assert (row.status, row.attempts) == ("pending", 1)
    assert "HTTP 503" in row.last_error and "Service unavailable" in row.last_error
    assert before + timedelta(seconds=0.25) <= row.next_attempt_at <= utcnow() + timedelta(seconds=0.5)
    assert drain(redis_client=redis).claimed == 0  # not due yet: nobody sleeps on it
    for attempt in (2, 3):
        time.sleep(0.55)
        drain(redis_client=redis)
        assert _rows()[0].attempts == attempt
    row = _rows()[0]
    assert row.status == "dead" and row.last_error.endswith("(gave up after 3 attempts)")
    assert loops.api.requests == 3 and row.id == event_id


def test_short_429_is_waited_out_in_place_and_a_long_one_reschedules_the_event(
        app, fast, redis, make_connection, loops):
    loops_connection(make_connection, loops)
    [event_id] = _vote("carol").ids
    db.session.commit()
    loops.server.faults.rate_limit(retry_after=1)
    started = time.monotonic()
    assert drain(redis_client=redis).done == 1
    assert time.monotonic() - started >= 1.0
    assert (_rows()[0].attempts, [e.status for e in loops.log.entries()]) == (1, [429, 200])
    _vote("dave")
    db.session.commit()
    loops.server.faults.rate_limit(retry_after=30)
    before = utcnow()
    assert drain(redis_client=redis).retrying == 1
    dave = _rows()[1]
    assert dave.status == "pending" and "HTTP 429" in dave.last_error
    assert dave.next_attempt_at >= before + timedelta(seconds=30) and event_id != dave.id


def test_permanent_error_is_dead_at_once_and_retry_delivers_once_the_destination_is_fixed(
        app, fast, redis, make_connection, loops):
    loops.api.known_properties = {"firstName", "lastName"}  # liveUrl and nomineeName not created yet
    loops_connection(make_connection, loops)
    ids = outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION).ids
    db.session.commit()
    result = drain(redis_client=redis)
    assert (result.dead, result.retrying) == (2, 0)
    for row in _rows():
        assert (row.status, row.attempts) == ("dead", 1)
        assert "HTTP 400" in row.last_error and "does not exist. Create it in Loops first." in row.last_error
    loops.api.define_property("liveUrl")
    loops.api.define_property("nomineeName")
    assert outbox.retry(db.session, outbox.matching_ids(db.session, status="dead")) == 2
    assert drain(redis_client=redis).done == 2
    assert [r.status for r in _rows()] == ["done", "done"] and [r.id for r in _rows()] == ids
    assert loops.api.contact("bob@example.com")["userGroup"] == "Nominees"
    assert loops.api.contact("alice@example.com")["userGroup"] == "Nominator Live"


def test_breaker_stops_hammering_a_failing_destination_without_burning_attempts_then_probes(
        app, fast, redis, make_connection, loops):
    app.config.update(OUTBOX_BREAKER_THRESHOLD=3, OUTBOX_BREAKER_COOLDOWN_SECONDS=0.3)
    loops_connection(make_connection, loops)
    for n in range(12):
        _vote(f"voter{n}")
    db.session.commit()
    loops.api.outage = 503
    first = drain(redis_client=redis)
    assert loops.api.requests == 3  # then the breaker opened
    assert (first.retrying, first.released) == (3, first.claimed - 3)
    assert sorted(r.attempts for r in _rows()) == [0] * 9 + [1] * 3
    assert drain(redis_client=redis).claimed == 0 and loops.api.requests == 3
    time.sleep(0.35)
    probe = drain(redis_client=redis)
    assert loops.api.requests == 4  # one probe, failed: open again, for 0.6 s
    assert (probe.retrying, probe.released) == (0, probe.claimed)  # a probe costs no attempt either
    assert sorted(r.attempts for r in _rows()) == [0] * 9 + [1] * 3
    assert sum("breaker probe: attempt not counted" in (r.last_error or "") for r in _rows()) == 1
    loops.api.outage = None
    time.sleep(0.2)
    assert drain(redis_client=redis).claimed == 0
    time.sleep(0.5)
    assert drain(redis_client=redis).done == 12
    assert loops.api.requests == 4 + 12
    assert sorted(r.attempts for r in _rows()) == [1] * 9 + [2] * 3


def test_breaker_probe_of_a_dead_or_busy_holder_does_not_keep_others_off_for_long(app, fast, redis, make_connection,
                                                                                 loops):
    """The probe lock used to live as long as a lease (120 s by default): a worker killed
    while holding it, or a drain that won it and then claimed other destinations' rows,
    kept every other worker off the destination for that long."""
    from worker.delivery import Delivery

    app.config.update(OUTBOX_LEASE_SECONDS=120, OUTBOX_HTTP_TIMEOUT_SECONDS=10, OUTBOX_BREAKER_THRESHOLD=1,
                      OUTBOX_BREAKER_COOLDOWN_SECONDS=0.1)
    assert outbox.Breaker.from_config(redis, app.config).probe_seconds == 30  # one request's worth
    half_open = loops_connection(make_connection, loops).id
    other = loops_connection(make_connection, loops, name="loops-2", mappings={
        "vote_cast": [{"action": "upsert_contact", "email": "{voter.email}"}]}).id
    outbox.publish(db.session, "vote_cast", "v-1", {"voter": {"email": "v1@example.com"}}, connection=other)
    db.session.commit()
    assert outbox.Breaker.from_config(redis, app.config).failure(half_open)
    time.sleep(0.15)  # cooled down: the next claimer may probe
    delivery = Delivery(redis_client=redis, worker_name="w1")
    [claimed] = delivery._claim(limit=10)  # wins the probe, yet takes only the other destination's row
    assert claimed.connection_id == other
    rival = outbox.Breaker.from_config(redis, app.config)
    assert half_open not in rival.blocked() and rival.probing(half_open)  # handed back at once
    delivery.breaker.close()
    rival.close()


def test_breaker_never_blocks_deliveries_when_redis_is_gone(app, fast, make_connection, loops):
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    loops_connection(make_connection, loops)
    _vote("carol")
    db.session.commit()
    unreachable = redis_lib.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    breaker = outbox.Breaker(unreachable)
    assert breaker.blocked() == {} and breaker.failure(1) is False
    # The delivery itself needs no Redis besides the rate limiter, which falls back in-process.
    assert drain(redis_client=None).done == 1


# -- retry and discard ---------------------------------------------------------------------


def test_retry_and_discard_touch_only_pending_and_dead_events(app, make_connection, loops):
    loops_connection(make_connection, loops)
    for n in range(5):
        _vote(f"voter{n}")
    db.session.commit()
    claimed = outbox.claim(db.session, "w1", limit=5)
    for c in claimed[:3]:
        outbox.mark_failed(db.session, c, "HTTP 422 nope", permanent=True)
    outbox.mark_done(db.session, claimed[3])
    dead = outbox.matching_ids(db.session, status="dead")
    assert dead == [c.id for c in claimed[:3]]
    processing, done = claimed[4].id, claimed[3].id
    assert outbox.retry(db.session, dead + [processing, done]) == 3
    assert [(r.status, r.attempts) for r in _rows()] == [("pending", 0)] * 3 + [("done", 1), ("processing", 1)]
    assert outbox.discard(db.session, [dead[0], processing, done]) == 1
    assert [r.id for r in _rows()] == dead[1:] + [done, processing]
    assert outbox.counts(db.session) == {"pending": 2, "processing": 1, "done": 1, "dead": 0}


def test_filters_select_by_status_type_and_key(app, make_connection, loops):
    loops_connection(make_connection, loops)
    outbox.publish(db.session, "nomination_approved", "nom-1", NOMINATION)
    _vote("alice")
    db.session.commit()
    assert len(outbox.matching_ids(db.session, key="alice@example.com")) == 2
    assert len(outbox.matching_ids(db.session, type="vote_cast", key="alice@example.com")) == 1
    assert outbox.matching_ids(db.session, status="dead") == []
    assert [r.key for r in outbox.list_events(db.session, type="nomination_approved")] == [
        "alice@example.com", "bob@example.com"]
