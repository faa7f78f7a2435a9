"""Claiming rows and settling them: the worker's side of the outbox (docs/OUTBOX.md,
"Sending" and "Failures"). worker/outbox_sender.py is the loop that uses it.

Per-key order: a row is never claimed while an older row with the same key is pending or
processing. A dead row no longer holds its key back (a person decides what happens to it).

Every change after publish is a conditional UPDATE on the row's status and, for a worker,
on its claim (claimed_by and the attempt number), so a worker whose lease ran out can
never overwrite the outcome of the worker that took the row over.
"""
import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from flask import current_app
from sqlalchemy import Integer, String, bindparam, case, exists, literal_column, select, text, tuple_, update
from sqlalchemy.orm import aliased

from .. import metrics, retry_policy
from ..models import OUTBOX_FINISHED, Connection, OutboxEvent, utcnow
from .statuses import DEAD, DONE, PENDING, PROCESSING

log = logging.getLogger(__name__)


@dataclass
class Claimed:
    """One row a worker holds: what to send, and the claim every later write is tied to."""

    id: int
    connection_id: int
    type: str
    key: str
    payload: dict
    idempotency_key: str
    attempts: int
    max_attempts: int
    created_at: object  # for the delivery latency metric, read with the claim
    claimed_by: str
    lease_until: object
    claimed_at: float = field(default_factory=time.monotonic)


def claim(session, claimed_by, *, limit=1, lease_seconds=None, event_id=None, skip_connections=(), now=None):
    """Claim up to `limit` due rows, oldest first, for one worker; commits. Due: pending and
    past next_attempt_at, or processing with an expired lease (its worker died). Never a row
    with an older pending or processing row of the same key, never one of a disabled
    destination or of `skip_connections` (breaker open).

    One UPDATE whose subquery picks the rows. PostgreSQL: the subquery locks them FOR UPDATE
    SKIP LOCKED, so concurrent workers take disjoint rows without waiting on each other.
    SQLite runs one writer at a time, so the pick and the claim are atomic."""
    now = now or utcnow()
    lease_seconds = current_app.config["OUTBOX_LEASE_SECONDS"] if lease_seconds is None else lease_seconds
    params = {"now": now, "lease_until": now + timedelta(seconds=lease_seconds), "claimed_by": claimed_by,
              "limit": limit}
    if event_id is not None:
        params["event_id"] = event_id
    if skip_connections:
        params["skip"] = list(skip_connections)
    postgresql = session.get_bind().dialect.name == "postgresql"
    claim_update = _claim_statement(postgresql, event_id is not None, bool(skip_connections))
    if postgresql:
        _relaxed_commit(session)
    rows = session.execute(claim_update, params).all()
    session.commit()
    return sorted((Claimed(*row, claimed_by=claimed_by, lease_until=params["lease_until"]) for row in rows),
                  key=lambda c: c.id)


@functools.lru_cache(maxsize=None)
def _claim_statement(postgresql, one_event, skipping):
    """The claim, one UPDATE whose subquery picks the rows, built once per shape with bound
    parameters (now, lease_until, claimed_by, limit; event_id, skip): building it per claim,
    and SQLAlchemy's cache key of a new statement object, were a fifth of a delivery's CPU
    (docs/PERFORMANCE.md). On PostgreSQL the pick locks its rows FOR UPDATE SKIP LOCKED, so
    concurrent workers take disjoint rows without waiting on each other (one statement: the
    pick and the claim were two round trips)."""
    cand, older = aliased(OutboxEvent, name="cand"), aliased(OutboxEvent, name="older")
    now = bindparam("now", type_=OutboxEvent.__table__.c.updated_at.type)
    pick = (
        select(cand.id)
        .where(
            _unsent(cand),
            # Due: pending past its next attempt, or processing past its lease (its worker died).
            # A CASE, not an OR: SQLite would answer an OR from another index, then sort.
            case((cand.status == PENDING, cand.next_attempt_at <= now), else_=cand.lease_until < now),
            ~exists().where(_unsent(older), older.key == cand.key, older.id < cand.id),
            cand.connection_id.in_(select(Connection.id).where(Connection.enabled.is_(True))),
        )
        .order_by(cand.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if one_event:
        pick = pick.where(cand.id == bindparam("event_id", type_=Integer))
    if skipping:
        pick = pick.where(cand.connection_id.not_in(bindparam("skip", expanding=True, type_=Integer)))
    if postgresql:
        pick = pick.with_for_update(skip_locked=True)
    return (
        update(OutboxEvent)
        .where(OutboxEvent.id.in_(pick.scalar_subquery()))
        .values(status=PROCESSING, attempts=OutboxEvent.attempts + 1,
                lease_until=bindparam("lease_until", type_=OutboxEvent.__table__.c.lease_until.type),
                claimed_by=bindparam("claimed_by", type_=String), updated_at=now)
        .returning(OutboxEvent.id, OutboxEvent.connection_id, OutboxEvent.type, OutboxEvent.key,
                   OutboxEvent.payload, OutboxEvent.idempotency_key, OutboxEvent.attempts,
                   OutboxEvent.max_attempts, OutboxEvent.created_at)
        .execution_options(synchronize_session=False)
    )


def _unsent(table):
    """The rows still to send, written as the outbox's partial indexes state their condition
    (webapp/models.py, OUTBOX_UNSENT_WHERE), word for word: a database uses a partial index
    only when the query's WHERE states its condition, and a bound parameter in place of a
    literal does not (SQLite never, PostgreSQL not in a generic plan). `NOT IN` the finished
    statuses rather than `IN` the unsent ones: no other index can answer it, so SQLite
    walks the small index of unsent rows in id order and stops at the batch's last, where it
    answered an `IN` from the status index and sorted every due row. Before, a claim walked
    every row ever sent, and every older row of each candidate's key (docs/PERFORMANCE.md,
    "Claims that walked the sent rows")."""
    return table.status.not_in([literal_column(repr(status)) for status in OUTBOX_FINISHED])


def _owned(c):
    return (OutboxEvent.id == c.id, OutboxEvent.status == PROCESSING,
            OutboxEvent.claimed_by == c.claimed_by, OutboxEvent.attempts == c.attempts)


def _relaxed_commit(session):
    """PostgreSQL: this transaction's commit need not wait for the WAL flush. A worker's
    claims and outcomes may be lost in a database crash, and that only means a row is
    sent again (at-least-once, same idempotency key), never that one is lost;
    publishing, in the app's transaction, keeps full durability."""
    session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _settle(session, c, values):
    if session.get_bind().dialect.name == "postgresql":
        _relaxed_commit(session)
    result = session.execute(update(OutboxEvent).where(*_owned(c)).values(**values)
                             .execution_options(synchronize_session=False))
    session.commit()
    if result.rowcount != 1:
        _lost(c)
        return False
    return True


def _lost(c):
    log.warning("outbox event %s: claim lost before its outcome was recorded (lease expired?)", c.id)


def mark_done(session, c, now=None):
    return mark_done_many(session, [(c, now or utcnow())])[0]


def mark_done_many(session, delivered):
    """Record [(claimed row, the time the destination accepted it)] as delivered, in one
    statement and one transaction (a sender records a batch's successes together: one
    commit instead of one per row; a crash before it only means those rows are sent again,
    with the same idempotency keys). Returns one bool per row: False where the claim had
    been lost (its lease expired and another worker took it)."""
    if not delivered:
        return []
    params = {"now": utcnow(), "claimers": sorted({c.claimed_by for c, _ in delivered})}
    if session.get_bind().dialect.name == "postgresql":
        _relaxed_commit(session)
        params.update(ids=[c.id for c, _ in delivered], attempts=[c.attempts for c, _ in delivered],
                      accepted=[at for _, at in delivered])
        statement = _DONE_POSTGRESQL
    else:
        params["claims"] = [(c.id, c.attempts) for c, _ in delivered]
        for i, (c, at) in enumerate(delivered):
            params[f"id_{i}"], params[f"at_{i}"] = c.id, at
        statement = _done_statement(len(delivered))
    done = set(session.execute(statement, params).all())
    session.commit()
    settled = []
    for c, at in delivered:
        settled.append((c.id, c.claimed_by) in done)
        if not settled[-1]:
            _lost(c)
            continue
        if c.created_at is not None:
            metrics.observe("outbox_delivery_latency_seconds", max(0.0, (at - c.created_at).total_seconds()))
    if done:
        metrics.inc("outbox_events", len(done), status=DONE)
    return settled


# PostgreSQL: the batch as three arrays joined by unnest, one short statement whatever its
# size (the CASE of _done_statement, a branch and two parameters a row, took PostgreSQL 6 ms
# for 50 rows: docs/PERFORMANCE.md, "Outcomes on PostgreSQL").
_DONE_POSTGRESQL = text(f"""
UPDATE outbox_events AS e
SET status = '{DONE}', delivered_at = v.accepted, lease_until = NULL, last_error = NULL, updated_at = :now
FROM unnest(CAST(:ids AS integer[]), CAST(:attempts AS integer[]), CAST(:accepted AS timestamp[]))
     AS v(id, attempts, accepted)
WHERE e.id = v.id AND e.attempts = v.attempts AND e.status = '{PROCESSING}'
  AND e.claimed_by = ANY(CAST(:claimers AS text[]))
RETURNING e.id, e.claimed_by""").bindparams(  # noqa: S608  the statuses are this package's constants; values are bound
    bindparam("now", type_=OutboxEvent.__table__.c.updated_at.type))


@functools.lru_cache(maxsize=64)
def _done_statement(n):
    """mark_done_many's UPDATE for n rows, built once per n with bound parameters (see
    _claim_statement): (id, attempts) with this claimer is each row's claim, and
    `delivered_at` is each row's own acceptance time."""
    delivered_at = OutboxEvent.__table__.c.delivered_at.type
    accepted_at = case(*[(OutboxEvent.id == bindparam(f"id_{i}", type_=Integer), bindparam(f"at_{i}", type_=delivered_at))
                         for i in range(n)])
    return (
        update(OutboxEvent)
        .where(tuple_(OutboxEvent.id, OutboxEvent.attempts).in_(bindparam("claims", expanding=True)),
               OutboxEvent.status == PROCESSING,
               OutboxEvent.claimed_by.in_(bindparam("claimers", expanding=True, type_=String)))
        .values(status=DONE, delivered_at=accepted_at, lease_until=None, last_error=None,
                updated_at=bindparam("now", type_=OutboxEvent.__table__.c.updated_at.type))
        .returning(OutboxEvent.id, OutboxEvent.claimed_by)
        .execution_options(synchronize_session=False)
    )


def mark_failed(session, c, reason, *, permanent=False, retry_after=None, now=None):
    """After a failed attempt: dead at once when permanent or out of attempts, else pending
    with the next attempt time. Returns the new status, or None if the claim was lost."""
    now = now or utcnow()
    reason = (reason or "unknown error")[:2000]
    if permanent:
        values = {"status": DEAD, "last_error": reason}
    elif retry_policy.outbox_gives_up(c.attempts, c.max_attempts):
        values = {"status": DEAD, "last_error": f"{reason} (gave up after {c.attempts} attempts)"}
    else:
        delay = retry_policy.outbox_retry_delay(c.attempts, retry_after, current_app.config["OUTBOX_BACKOFF_BASE_SECONDS"],
                                                current_app.config["OUTBOX_BACKOFF_MAX_SECONDS"])
        values = {"status": PENDING, "last_error": reason, "next_attempt_at": now + timedelta(seconds=delay)}
    values.update(lease_until=None, updated_at=now)
    if not _settle(session, c, values):
        return None
    metrics.inc("outbox_events", status=values["status"])
    return values["status"]


def release(session, c, not_before=None, reason=None, now=None):
    """Give a claimed row back without counting its attempt: the breaker is open, the
    lease is too short to start it safely, or it was the breaker's probe and failed."""
    now = now or utcnow()
    values = {"status": PENDING, "attempts": OutboxEvent.attempts - 1, "lease_until": None, "updated_at": now,
              "next_attempt_at": max(now, not_before) if not_before else now}
    if reason:
        values["last_error"] = reason[:2000]
    return _settle(session, c, values)
