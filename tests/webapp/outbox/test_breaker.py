"""The circuit breaker (webapp/outbox/breaker.py), through in-process drains against the
Loops simulator over real HTTP."""
from datetime import timedelta

from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    end_breaker_cooldown,
    fast,
    loops,
    loops_connection,
    make_due,
    outbox_rows,
    vote,
)
from webapp import outbox
from webapp.extensions import db
from webapp.models import utcnow
from webapp.outbox.breaker import Breaker
from worker.outbox_sender import OutboxSender, drain


def test_breaker_stops_hammering_a_failing_destination_without_burning_attempts_then_probes(
        app, fast, redis, make_connection, loops):
    # Cooldowns far longer than the test: time passes by end_breaker_cooldown and make_due,
    # never by sleeping through a window.
    app.config.update(OUTBOX_BREAKER_THRESHOLD=3, OUTBOX_BREAKER_COOLDOWN_SECONDS=60)
    destination = loops_connection(make_connection, loops).id
    for n in range(12):
        vote(f"voter{n}")
    db.session.commit()
    loops.api.outage = 503
    first = drain(redis_client=redis)
    assert loops.api.requests == 3  # then the breaker opened
    assert (first.retrying, first.released) == (3, first.claimed - 3)
    assert sorted(r.attempts for r in outbox_rows()) == [0] * 9 + [1] * 3
    make_due()
    assert drain(redis_client=redis).claimed == 0 and loops.api.requests == 3  # due, but the breaker is open
    end_breaker_cooldown(redis, destination)
    make_due()
    probe = drain(redis_client=redis)
    assert loops.api.requests == 4  # one probe, failed: open again, for twice the cooldown
    assert (probe.retrying, probe.released) == (0, probe.claimed)  # a probe costs no attempt either
    assert sorted(r.attempts for r in outbox_rows()) == [0] * 9 + [1] * 3
    assert sum("breaker probe: attempt not counted" in (r.last_error or "") for r in outbox_rows()) == 1
    loops.api.outage = None
    make_due()
    assert drain(redis_client=redis).claimed == 0
    end_breaker_cooldown(redis, destination)
    make_due()
    assert drain(redis_client=redis).done == 12
    assert loops.api.requests == 4 + 12
    assert sorted(r.attempts for r in outbox_rows()) == [1] * 9 + [2] * 3


def test_breaker_probe_of_a_dead_or_busy_holder_does_not_keep_others_off_for_long(app, fast, redis, make_connection,
                                                                                 loops):
    """The probe lock used to live as long as a lease (120 s by default): a worker killed
    while holding it, or a drain that won it and then claimed other destinations' rows,
    kept every other worker off the destination for that long."""
    app.config.update(OUTBOX_LEASE_SECONDS=120, OUTBOX_HTTP_TIMEOUT_SECONDS=10, OUTBOX_BREAKER_THRESHOLD=1,
                      OUTBOX_BREAKER_COOLDOWN_SECONDS=60)
    assert Breaker.from_config(redis, app.config).probe_seconds == 30  # one request's worth
    half_open = loops_connection(make_connection, loops).id
    other = loops_connection(make_connection, loops, name="loops-2", mappings={
        "vote_cast": [{"action": "upsert_contact", "email": "{voter.email}"}]}).id
    outbox.publish(db.session, "vote_cast", "v-1", {"voter": {"email": "v1@example.com"}}, connection=other)
    db.session.commit()
    assert Breaker.from_config(redis, app.config).failure(half_open)
    end_breaker_cooldown(redis, half_open)  # cooled down: the next claimer may probe
    sender = OutboxSender(redis_client=redis, worker_name="w1")
    [claimed] = sender._claim(limit=10)  # wins the probe, yet takes only the other destination's row
    assert claimed.connection_id == other
    rival = Breaker.from_config(redis, app.config)
    assert half_open not in rival.blocked() and rival.probing(half_open)  # handed back at once
    sender.breaker.close()
    rival.close()


def test_breaker_never_blocks_sending_when_redis_is_gone(app, fast, make_connection, loops):
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    loops_connection(make_connection, loops)
    vote("carol")
    db.session.commit()
    unreachable = redis_lib.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    breaker = Breaker.from_config(unreachable, app.config)
    assert breaker.blocked() == {} and breaker.failure(1) is False
    # Sending itself needs no Redis besides the rate limiter, which falls back in-process.
    assert drain(redis_client=None).done == 1


def test_breaker_decides_what_a_failure_costs_and_how_long_rows_wait(redis):
    """The decisions the sender asks for, on a clock of our own: failures before the breaker
    opens spend their attempt; rows of a destination whose breaker opened during the batch
    wait out the cooldown; the probe's failure spends nothing and doubles the cooldown."""
    now = [1000.0]

    def breaker():
        return Breaker(redis, redis_prefix="synchub", threshold=2, cooldown=10, max_cooldown=60, probe_seconds=30, clock=lambda: now[0])

    sender, rival = breaker(), breaker()
    assert sender.blocked() == {} and sender.held_until(7) is None
    assert sender.request_failed(7) is True and sender.held_until(7) is None  # still closed
    assert sender.request_failed(7) is True  # this one opened it
    assert timedelta(seconds=9) < sender.held_until(7) - utcnow() <= timedelta(seconds=10)
    assert rival.blocked() == {7: 1010.0} and sender.blocked() == {7: 1010.0}
    assert sender.held_until(7) is None  # a new claim: the open breaker now keeps the rows unclaimed

    now[0] = 1011.0  # cooled down: the first to look wins the probe, the others wait
    assert sender.blocked() == {} and sender.probing(7)
    assert 7 in rival.blocked() and not rival.probing(7)
    assert sender.request_failed(7) is False  # the probe's failure costs its event nothing
    assert not sender.probing(7)
    assert timedelta(seconds=19) < sender.held_until(7) - utcnow() <= timedelta(seconds=20)  # doubled

    now[0] = 1032.0
    assert sender.blocked() == {} and sender.probing(7)
    sender.claimed(set())  # the claim took no row of 7: the probe goes back at once
    assert rival.blocked() == {} and rival.probing(7)
    rival.success(7)  # the probe went through: closed
    assert breaker().blocked() == {} and breaker().open_until(7) is None

