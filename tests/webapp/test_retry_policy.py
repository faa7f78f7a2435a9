"""The retry table (webapp/retry_policy.py): what each error class becomes, and the delays."""
import psycopg
import pytest
import requests
from sqlalchemy.exc import OperationalError

from webapp import retry_policy
from webapp.connectors.errors import AuthError, BadRecord, ConfigError, HttpError, RateLimited, TransientError


@pytest.mark.parametrize("exc, error_class, retry, health", [
    (RateLimited("429", retry_after=900), "rate_limited", True, "failing"),
    (TransientError("503"), "transient", True, "failing"),
    (requests.ConnectionError("reset"), "transient", True, "failing"),
    (OperationalError("SELECT 1", {}, Exception("server closed the connection")), "transient", True, "failing"),
    # Raised unwrapped by worker/store.py's raw cursors: a connection lost mid-page is no bug.
    (psycopg.OperationalError("consuming input failed: could not receive data from server: Connection timed out"),
     "transient", True, "failing"),
    (AuthError("401"), "auth", False, "needs_reauth"),
    (ConfigError("bad base URL"), "config", False, "failing"),
    (HttpError("404", 404), "config", False, "failing"),
    (BadRecord("no id"), "config", False, "failing"),
    (KeyError("bug"), "internal", False, "failing"),
])
def test_a_failed_run_attempt_is_retried_only_for_rate_limits_and_transient_errors(exc, error_class, retry, health):
    verdict = retry_policy.for_run(exc)
    assert (verdict.error_class, verdict.retry, verdict.health) == (error_class, retry, health)


def test_request_backoff_is_full_jitter_under_the_cap():
    waits = [retry_policy.request_backoff(n, 0.5, 4.0) for n in (1, 2, 3, 10) for _ in range(200)]
    assert all(0 <= w <= 4.0 for w in waits)
    assert max(retry_policy.request_backoff(1, 0.5, 4.0) for _ in range(200)) <= 0.5


def test_request_gives_up_after_its_retries_and_twice_as_many_429s():
    assert not retry_policy.request_gives_up(rate_limited=0, failures=5, max_retries=5)
    assert retry_policy.request_gives_up(rate_limited=0, failures=6, max_retries=5)
    assert not retry_policy.request_gives_up(rate_limited=10, failures=0, max_retries=5)
    assert retry_policy.request_gives_up(rate_limited=11, failures=0, max_retries=5)


def test_a_retry_after_longer_than_allowed_is_not_waited_out_in_the_call():
    assert retry_policy.request_waits_out(None, 300)
    assert retry_policy.request_waits_out(300, 300)
    assert not retry_policy.request_waits_out(301, 300)


def test_outbox_backoff_doubles_with_half_of_it_random_and_honours_retry_after():
    for attempts, ceiling in ((1, 10), (2, 20), (3, 40), (20, 3600)):
        waits = [retry_policy.outbox_backoff(attempts, 10, 3600) for _ in range(100)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), attempts
        assert max(waits) - min(waits) > ceiling / 10, "jittered, not one fixed delay"
    assert retry_policy.outbox_retry_delay(1, 120, 10, 3600) == 120
    assert 5 <= retry_policy.outbox_retry_delay(1, None, 10, 3600) <= 10
    assert retry_policy.outbox_gives_up(8, 8) and not retry_policy.outbox_gives_up(7, 8)


@pytest.mark.parametrize("exc, outcome, extra", [
    (retry_policy.Unsendable("connection 3 no longer exists"), "dead", {}),
    (HttpError("422 bad email", 422), "dead", {"provider_answered": True}),
    (HttpError("404", 404), "provider", {}),
    (RateLimited("429", retry_after=30), "retry", {"retry_after": 30}),
    (AuthError("401"), "provider", {"needs_reauth": True}),
    (TransientError("503"), "provider", {}),
    (requests.ConnectionError("reset"), "provider", {}),
    (KeyError("bug"), "provider", {"unexpected": True}),
])
def test_a_failed_outbox_send_is_dead_only_when_the_event_itself_is_wrong(exc, outcome, extra):
    verdict = retry_policy.for_outbox(exc)
    assert verdict.outcome == outcome
    for name, value in extra.items():
        assert getattr(verdict, name) == value, name


def test_a_connector_may_widen_the_permanent_statuses():
    assert retry_policy.for_outbox(HttpError("409", 409), permanent_statuses=(400, 409, 422)).outcome == "dead"
