"""When synchub tries again: one table for the three places that retry.

    place     what is retried                       who asks
    request   one HTTP call to a provider           webapp/connectors/http.py
    run       a sync run after a failed attempt     worker/engine.py (the run is requeued by webapp/runs.py)
    outbox    an outbox event after a failed send   worker/outbox_sender.py (the row is settled by webapp/outbox)

For each error class (webapp/connectors/errors.py) the table says: retried or not, after
what delay, and whether the retry spends one of the attempts (RUN_MAX_ATTEMPTS,
OUTBOX_MAX_ATTEMPTS). Connectors never decide this themselves: they raise the class.

    error                        request (in the call)             run                           outbox event
    RateLimited, Retry-After     wait it out if <= max_retry_after  requeued after the run         retried after max(backoff, Retry-After),
      within the call's bounds   (at most 2 x max_retries times)   backoff, spends one            spends one
                                                                   (when the call gave up)
    QuotaExhausted: Retry-After  raised at once                    waits until then (status       retried after max(backoff, Retry-After),
      > max_retry_after                                            waiting), no attempt spent;    spends one
                                                                   fails after RUN_MAX_DEFERRALS
    TransientError (5xx, 408,    full-jitter backoff, at most       requeued after the run         retried after backoff, spends one;
      timeouts, resets)          max_retries times                 backoff, spends one            counts towards the breaker
    AuthError (401/403)          one token renewal on a 401         failed, connection             retried after backoff, spends one;
                                                                    needs_reauth                   connection needs_reauth, breaker
    ConfigError, HttpError       never                              failed                         HTTP 400/422 (or the connector's
      (other 4xx)                                                                                 permanent statuses): dead at once;
                                                                                                  otherwise like TransientError
    BadRecord                    -                                  the record is skipped, the     -
                                                                    run goes on
    MappingError, Unsendable     -                                  -                              dead at once (the event cannot be
                                                                                                  mapped, or has no destination)
    a lost database connection   -                                  requeued after the run         -
      (OperationalError, also                                       backoff, spends one
      the driver's own)
    RQ's job time limit          -                                  failed ("config": raise        -
      (JobTimeoutException)                                         SYNCHUB_JOB_TIMEOUT_SECONDS)
    anything else (a bug)        -                                  failed ("internal")            retried after backoff, spends one
    breaker probe failure        -                                  -                              given back: no attempt spent

A requeued run resumes from its checkpoint; attempts used up turn "retry" into "failed"
(or "dead" for an outbox event) with the reason. The run backoff is the pause between two
attempts of a run: RUN_RETRY_BASE_SECONDS, then three times longer each time (10 s, 30 s,
90 s, ... by default), at most RUN_RETRY_MAX_SECONDS, each +-20 % at random so the runs of
one outage do not all come back in the same second; the run waits (status waiting) and
the supervisor queues it when the pause is over.
"""
import random
import sqlite3
from dataclasses import dataclass

import psycopg
import requests
from rq.timeouts import JobTimeoutException
from sqlalchemy.exc import OperationalError

from .connectors.errors import (AuthError, BadRecord, ConfigError, HttpError, QuotaExhausted, RateLimited,
                                TransientError)
from .connectors.mapping import MappingError
from .error_words import describe

# The drivers' own OperationalError, as SQLAlchemy's wraps it: the page store's raw DBAPI cursors
# (worker/store.py) raise it unwrapped. A connection lost mid-page (a database restart, a
# network partition: docs/RELIABILITY.md, "Partitions") is transient there too, not a bug.
DRIVER_OPERATIONAL_ERRORS = (psycopg.OperationalError, sqlite3.OperationalError)

# -- request: inside one HTTP call -------------------------------------------------------


def request_backoff(n, base, cap):
    """Wait before the n-th retry of a call: full jitter (uniform in [0, min(cap, base * 2**(n-1))]),
    so many workers retrying one provider spread out."""
    return random.uniform(0, min(cap, base * 2 ** (n - 1)))  # noqa: S311  jitter spreads load; nothing to predict


def request_gives_up(*, rate_limited, failures, max_retries):
    """A call stops retrying after `max_retries` transient failures; 429s are expected and
    waited out, but not forever: twice as many."""
    return rate_limited > max_retries * 2 or failures > max_retries


def request_waits_out(retry_after, max_retry_after):
    """A Retry-After is waited out inside the call unless it is longer than we may hold a
    worker; then the call raises RateLimited and the run is given back."""
    return retry_after is None or retry_after <= max_retry_after


# -- run: a sync run after a failed attempt ----------------------------------------------


@dataclass(frozen=True)
class RunVerdict:
    error_class: str  # stored on the run: "auth", "config", "rate_limited", "transient", "internal"
    retry: bool  # requeued (resuming from the checkpoint) while attempts are left, after run_backoff
    health: str = "failing"  # the connection's health when the run fails
    defer_seconds: float | None = None  # wait this long giving the attempt back (no retry, no failure)


def for_run(exc):
    """What a failed attempt of a run becomes."""
    if isinstance(exc, AuthError):
        return RunVerdict("auth", retry=False, health="needs_reauth")
    if isinstance(exc, (ConfigError, BadRecord)):  # a BadRecord here is one the engine could not skip
        return RunVerdict("config", retry=False)
    if isinstance(exc, JobTimeoutException):  # RQ's time limit struck inside the run: SYNCHUB_JOB_TIMEOUT_SECONDS
        return RunVerdict("config", retry=False)
    if isinstance(exc, QuotaExhausted):
        return RunVerdict("rate_limited", retry=False, defer_seconds=float(exc.retry_after))
    if isinstance(exc, RateLimited):
        return RunVerdict("rate_limited", retry=True)
    if isinstance(exc, (TransientError, requests.RequestException, OperationalError, *DRIVER_OPERATIONAL_ERRORS)):
        return RunVerdict("transient", retry=True)
    return RunVerdict("internal", retry=False)


def run_backoff(attempt, base, cap):
    """Seconds to pause before the attempt after failed attempt `attempt` (1, 2, ...):
    base, 3 x base, 9 x base ..., at most cap, each +-20 % at random. 0 when base is 0."""
    if base <= 0:
        return 0.0
    return min(cap, base * 3 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)  # noqa: S311  jitter spreads load; nothing to predict


# -- outbox: an event after a failed send ------------------------------------------------

# What a destination answers when the request itself is wrong; a connector may widen it
# with its own `permanent_statuses`.
PERMANENT_STATUSES = (400, 422)
# A 429 asking for at most this many seconds is waited out once, in place: our limiter
# already paces requests, so such a 429 is a near miss at a window's edge, not a reason to
# push the event back by a backoff.
OUTBOX_INLINE_RATE_LIMIT_WAIT = 2.0


class Unsendable(Exception):
    """An outbox event that can never be sent as it is (its destination is gone, or is not
    an outbound destination)."""


@dataclass(frozen=True)
class OutboxVerdict:
    # "dead": never retried. "retry": retried after max(backoff, Retry-After), spending an
    # attempt. "provider": the destination is unwell: counts towards its breaker, and is
    # retried after backoff spending an attempt, unless it was the breaker's probe.
    outcome: str
    reason: str
    retry_after: float | None = None
    needs_reauth: bool = False  # the connection is marked needs_reauth
    provider_answered: bool = False  # the destination is up (the request was wrong): breaker reset
    unexpected: bool = False  # a bug: logged with its traceback


def for_outbox(exc, permanent_statuses=PERMANENT_STATUSES):
    """What a failed send of an outbox event becomes."""
    if isinstance(exc, (Unsendable, MappingError)):
        return OutboxVerdict("dead", str(exc))
    if isinstance(exc, HttpError):
        if exc.status in permanent_statuses:
            return OutboxVerdict("dead", str(exc), provider_answered=True)
        return OutboxVerdict("provider", str(exc))
    if isinstance(exc, RateLimited):
        return OutboxVerdict("retry", str(exc), retry_after=exc.retry_after)
    if isinstance(exc, AuthError):
        return OutboxVerdict("provider", str(exc), needs_reauth=True)
    if isinstance(exc, (TransientError, ConfigError)):
        return OutboxVerdict("provider", str(exc))
    if isinstance(exc, requests.RequestException):
        return OutboxVerdict("provider", f"{describe(exc)} talking to the destination")
    # The reason stays short and free of data: the traceback is in the worker's log.
    return OutboxVerdict("provider", f"{describe(exc)}; see the worker log", unexpected=True)


def outbox_backoff(attempts, base, cap):
    """Wait before an event's next attempt, exponential in the attempts made: half fixed,
    half random, so retries of many events spread out but none comes back almost at once."""
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311  jitter spreads load; nothing to predict


def outbox_retry_delay(attempts, retry_after, base, cap):
    """Seconds until the next attempt: the backoff, or the provider's Retry-After if longer."""
    delay = outbox_backoff(attempts, base, cap)
    return max(delay, float(retry_after)) if retry_after else delay


def outbox_gives_up(attempts, max_attempts):
    return attempts >= max_attempts
