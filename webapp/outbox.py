"""The outbox: durable outbound pushes (SPEC §7). The rules live here; worker/delivery.py
carries deliveries out through the destination's connector.

    publish (caller's transaction) --commit--> pending --claim (lease)--> processing
    processing --delivered--------------------> done
    processing --transient failure, 429-------> pending, next_attempt_at = now + backoff
    processing --400/422, or last attempt-----> dead, with the reason
    processing --lease expired (worker died)--> claimable again
    processing --breaker open, probe failed,--> pending, the attempt given back
                 lease half spent
    pending/dead --retry (admin)--------------> pending, attempts reset
    pending/dead --discard (admin)------------> deleted

One app event becomes one row per provider action (a Loops contact upsert, an event
send), each with its own ordering key (the contact) and its own idempotency key, derived
from the app's: `<app key>.<n>`. Delivering a row is then a single request, so
at-least-once needs nothing more than the provider's idempotency or the action's own
(an upsert of the same properties is harmless twice).

Per-key order: a row is never claimed while an older row with the same key is pending
or processing. A dead row no longer blocks its key (an admin decides what happens to it).

Every change after publish is a conditional UPDATE on the row's status and, for a worker,
on its claim (claimed_by and the attempt number), so a worker whose lease ran out can
never overwrite the outcome of the worker that took the row over.
"""
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from flask import current_app, has_app_context
from rq.job import Job
from sqlalchemy import and_, delete, event, exists, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from . import metrics
from .connectors.errors import ConfigError
from .extensions import redis_ext
from .models import OUTBOX_STATUSES, Connection, OutboxEvent, utcnow

log = logging.getLogger(__name__)

PENDING, PROCESSING, DONE, DEAD = OUTBOX_STATUSES
ACTIVE = (PENDING, PROCESSING)

DELIVER_EVENT = "worker.jobs.deliver_event"
DRAIN_OUTBOX = "worker.jobs.drain_outbox"
# "<job id> <set at>" of a delivery job enqueued and not yet started: while that job still
# waits in its queue, a new event needs no other job, because that job claims after our
# commit and so will see it (see _kicked for when the flag is stale).
KICK_KEY = "synchub:outbox:kick"
DRAIN_KICK_KEY = "synchub:outbox:drain-queued"
# Drains at work: member = claimer, score = when its announcement lapses (epoch seconds).
DRAINING_KEY = "synchub:outbox:draining"

MAX_TYPE = 100
MAX_KEY = 255
# Row keys are "<app key>.<n>" and Loops takes at most 100 characters.
MAX_IDEMPOTENCY_KEY = 80
_SESSION_KEY = "synchub_outbox_new_event_ids"
_DESTINATIONS_KEY = "synchub_outbox_destinations"


class PublishError(ValueError):
    """The event was refused (bad fields, no destination, a mapping it cannot satisfy).
    Nothing was written."""


@dataclass
class Published:
    ids: list  # the outbox rows of this event (the existing ones for a duplicate)
    duplicate: bool = False


# -- publishing ------------------------------------------------------------------------


def publish(session, type, key, payload, idempotency_key=None, connection=None):
    """Write an app event into the outbox inside the caller's transaction (no commit).

    It is expanded right away, through each destination's mapping rules, into one row per
    provider action; nothing is sent before the caller commits, and a real-time delivery
    attempt is enqueued after that commit. `connection` (a Connection, id or name) picks
    one destination; by default every enabled destination whose mappings know `type`.
    A second publish with the same `idempotency_key` is accepted and changes nothing.
    """
    _check(type, key, payload, idempotency_key)
    base = idempotency_key or uuid.uuid4().hex
    rows = []
    for destination_id, connector, settings in _cached_destinations(session, type, connection):
        try:
            actions = connector.plan(settings, type, key, payload)
        except ConfigError as exc:
            raise PublishError(str(exc)) from None
        for action in actions:
            rows.append({"connection_id": destination_id, "key": action["key"], "payload": action["payload"]})
    if not rows:
        raise PublishError(f"no destination maps event type {type!r}"
                           + (" for that connection" if connection is not None else ""))
    now = utcnow()
    max_attempts = _config("OUTBOX_MAX_ATTEMPTS", 8)
    values = [
        {**row, "type": type, "idempotency_key": f"{base}.{n}", "status": PENDING, "attempts": 0,
         "max_attempts": max_attempts, "next_attempt_at": now, "created_at": now, "updated_at": now}
        for n, row in enumerate(rows)
    ]
    inserted = session.execute(_insert_ignoring_duplicates(session, values)
                               .returning(OutboxEvent.id, OutboxEvent.connection_id)).all()
    if not inserted:
        return Published(_rows_of(session, base), duplicate=True)
    session.info.setdefault(_SESSION_KEY, {}).update(dict(inserted))
    return Published(sorted(event_id for event_id, _ in inserted))


def _rows_of(session, base):
    """Ids of the rows published under this app idempotency key (`<base>.<n>`). LIKE finds
    the candidates (case-insensitively on SQLite); the exact test is done here."""
    found = session.execute(select(OutboxEvent.id, OutboxEvent.idempotency_key)
                            .where(OutboxEvent.idempotency_key.like(_like_escape(base) + ".%", escape="\\"))
                            .order_by(OutboxEvent.id)).all()
    prefix = base + "."
    return [row_id for row_id, key in found if key.startswith(prefix) and key[len(prefix):].isdigit()]


def _check(type, key, payload, idempotency_key):
    if not isinstance(type, str) or not type.strip() or len(type) > MAX_TYPE:
        raise PublishError(f"type must be a non-empty string of at most {MAX_TYPE} characters")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise PublishError(f"key must be a non-empty string of at most {MAX_KEY} characters")
    if not isinstance(payload, dict):
        raise PublishError("payload must be a JSON object")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key.strip()
                                        or len(idempotency_key) > MAX_IDEMPOTENCY_KEY):
        raise PublishError(f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters")


def _cached_destinations(session, type, connection):
    # An app publishing many events in one transaction looks its destinations up once.
    cache = session.info.setdefault(_DESTINATIONS_KEY, {})
    key = (type, connection.id if isinstance(connection, Connection) else connection)
    if key not in cache:
        cache[key] = _destinations(session, type, connection)
    return cache[key]


def _destinations(session, type, connection):
    """[(connection id, connector class, settings)] for this event type.

    Read on a connection of its own, outside the caller's transaction: on SQLite a
    transaction that reads before it writes can be refused its write when another process
    committed in between, and the caller's transaction must not be put at that risk."""
    from .connectors.base import connector_class

    query = select(Connection.id, Connection.name, Connection.connector, Connection.settings,
                   Connection.enabled).order_by(Connection.id)
    if connection is not None:
        if isinstance(connection, Connection):
            query = query.where(Connection.id == connection.id)
        elif isinstance(connection, int) or str(connection).isdigit():
            query = query.where(Connection.id == int(connection))
        else:
            query = query.where(Connection.name == str(connection))
    with session.get_bind().connect() as conn:
        found = conn.execute(query).all()
    if connection is not None and not found:
        name = connection.name if isinstance(connection, Connection) else connection
        raise PublishError(f"no connection {name!r}")
    destinations = []
    for row in found:
        try:
            cls = connector_class(row.connector)
        except ConfigError:
            continue
        if not hasattr(cls, "plan"):
            if connection is not None:
                raise PublishError(f"connection {row.name!r} ({row.connector}) is not an outbound destination")
            continue
        if connection is None and not row.enabled:
            continue
        destinations.append((row.id, cls, row.settings or {}))
    return destinations


def _insert_ignoring_duplicates(session, values):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise ConfigError(f"the outbox supports SQLite and PostgreSQL, not {dialect}")
    return dialect_insert(OutboxEvent).values(values).on_conflict_do_nothing(index_elements=["idempotency_key"])


def _like_escape(text):
    return re.sub(r"([\\%_])", r"\\\1", text)


@event.listens_for(Session, "after_commit")
def _after_commit(session):
    session.info.pop(_DESTINATIONS_KEY, None)
    new = session.info.pop(_SESSION_KEY, None)
    if new:
        request_delivery(min(new), destinations=set(new.values()))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session):
    session.info.pop(_SESSION_KEY, None)  # rolled back: those rows never existed
    session.info.pop(_DESTINATIONS_KEY, None)


# -- enqueueing --------------------------------------------------------------------------


def request_delivery(event_id=None, destinations=(), client=None):
    """Enqueue the real-time delivery attempt for a commit's new events, unless that is
    pointless: a delivery job is waiting in its queue (it claims after this commit, so it
    will see the events), as many drains as we allow are running (each claims once more
    after it stops announcing itself, see worker/delivery.py), or every destination
    involved has its breaker open (the periodic drain probes it later).
    Never raises: when Redis is down the events simply wait for the periodic drain."""
    if client is None and not has_app_context():
        log.warning("outbox event %s: no app context after commit; left for the periodic drain", event_id)
        return False
    try:
        client = client or redis_ext.client
        now = time.time()
        if destinations and all(Breaker(client).open_until(d) for d in destinations):
            return False
        if client.zcount(DRAINING_KEY, now, "+inf") >= _config("OUTBOX_PARALLEL_DRAINS", 4):
            return False
        job = _kicked(DELIVER_EVENT, "high", KICK_KEY, 120, client, args=(event_id,),
                      description=f"deliver outbox event {event_id}" if event_id else "deliver outbox events")
        return job is not None
    except Exception as exc:  # redis errors of any kind: the row is the source of truth
        log.warning("outbox event %s waits for the drain: enqueue failed (%s)", event_id, type(exc).__name__)
        return False


def enqueue_drain(client=None):
    """Enqueue a drain job unless one is waiting in its queue. Returns the job id or None.
    Raises on Redis errors (callers say so: the cron endpoint answers 503).

    This is the periodic drain (the supervisor's step, the cron endpoint): the only thing
    that claims rows nobody is delivering, i.e. a dead worker's expired leases and retries
    that came due after every drain ended. So it is never held back by a drain that has
    started: that one may belong to a worker killed since (RQ calls its job "started" for
    another 90 s, and its drain never claims again), and drains side by side are safe."""
    job = _kicked(DRAIN_OUTBOX, "default", DRAIN_KICK_KEY, 300, client or redis_ext.client, args=(),
                  description="drain the outbox")
    return job.id if job is not None else None


# KEYS: the flag, the queue's RQ intermediate list (jobs a worker has popped and not yet
# started). ARGV: the new job's id, the flag's TTL (s), how long a flag may name a job not
# yet written (s), RQ's job-hash key prefix. Returns 1 when the caller is to enqueue ARGV[1].
_KICK = """
local now = tonumber(redis.call('TIME')[1])
local flag = redis.call('GET', KEYS[1])
if flag then
  local job_id, set_at = string.match(flag, '^(%S+) (%d+)$')
  if job_id then
    local status = redis.call('HGET', ARGV[4] .. job_id, 'status')
    if status == 'queued' then
      if not redis.call('LPOS', KEYS[2], job_id) then return 0 end
    elseif not status then
      if now - tonumber(set_at) < tonumber(ARGV[3]) then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. now, 'EX', ARGV[2])
return 1
"""
_ENQUEUE_GRACE_SECONDS = 10


def _kicked(function, queue_name, flag, ttl, client, args, description):
    """Enqueue `function` unless the job named by `flag` is still waiting in its queue.

    The flag names the job it stands for, and the job clears it when it starts. A flag is
    stale, and replaced, when its job is no longer waiting: the job started (its worker
    died before clearing the flag: the worker was SIGKILLed while forking), finished,
    failed or vanished, or a worker popped it and died before starting it (RQ then leaves
    it 'queued' in the intermediate list for minutes). Trusting such a flag until its TTL
    held back every delivery for up to that long."""
    from .queue import queue

    target = queue(queue_name, connection=client)
    job_id = f"outbox-{uuid.uuid4().hex}"
    if not client.register_script(_KICK)(keys=[flag, target.intermediate_queue_key],
                                         args=[job_id, ttl, _ENQUEUE_GRACE_SECONDS, Job.redis_job_namespace_prefix]):
        return None
    try:
        return target.enqueue_call(
            function, args=args, job_id=job_id, description=description, result_ttl=600, failure_ttl=7 * 24 * 3600,
            timeout=int(_config("OUTBOX_DRAIN_BUDGET_SECONDS", 60) + _config("OUTBOX_LEASE_SECONDS", 120) + 60),
        )
    except Exception:
        client.delete(flag)
        raise


# -- claiming and outcomes (the worker's side) ---------------------------------------------


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
    claimed_by: str
    lease_until: object
    claimed_at: float = field(default_factory=time.monotonic)


def claim(session, claimed_by, *, limit=1, lease_seconds=None, event_id=None, skip_connections=(), now=None):
    """Claim up to `limit` due rows, oldest first, for one worker; commits. Due: pending and
    past next_attempt_at, or processing with an expired lease (its worker died). Never a row
    with an older pending or processing row of the same key, never one of a disabled
    destination or of `skip_connections` (breaker open).

    PostgreSQL: SELECT ... FOR UPDATE SKIP LOCKED, so concurrent workers take disjoint rows
    without waiting on each other. SQLite: one UPDATE whose subquery picks the rows; SQLite
    runs one writer at a time, so the pick and the claim are atomic."""
    now = now or utcnow()
    lease_seconds = _config("OUTBOX_LEASE_SECONDS", 120) if lease_seconds is None else lease_seconds
    lease_until = now + timedelta(seconds=lease_seconds)
    cand, older = aliased(OutboxEvent, name="cand"), aliased(OutboxEvent, name="older")
    query = (
        select(cand.id)
        .where(
            or_(and_(cand.status == PENDING, cand.next_attempt_at <= now),
                and_(cand.status == PROCESSING, cand.lease_until < now)),
            ~exists().where(older.key == cand.key, older.id < cand.id, older.status.in_(ACTIVE)),
            cand.connection_id.in_(select(Connection.id).where(Connection.enabled.is_(True))),
        )
        .order_by(cand.id)
        .limit(limit)
    )
    if event_id is not None:
        query = query.where(cand.id == event_id)
    if skip_connections:
        query = query.where(cand.connection_id.not_in(list(skip_connections)))
    claim_update = (
        update(OutboxEvent)
        .values(status=PROCESSING, attempts=OutboxEvent.attempts + 1, lease_until=lease_until,
                claimed_by=claimed_by, updated_at=now)
        .returning(OutboxEvent.id, OutboxEvent.connection_id, OutboxEvent.type, OutboxEvent.key,
                   OutboxEvent.payload, OutboxEvent.idempotency_key, OutboxEvent.attempts,
                   OutboxEvent.max_attempts)
        .execution_options(synchronize_session=False)
    )
    if session.get_bind().dialect.name == "postgresql":
        _relaxed_commit(session)
        ids = session.execute(query.with_for_update(skip_locked=True)).scalars().all()
        rows = session.execute(claim_update.where(OutboxEvent.id.in_(ids))).all() if ids else []
    else:
        rows = session.execute(claim_update.where(OutboxEvent.id.in_(query.scalar_subquery()))).all()
    session.commit()
    return sorted((Claimed(*row, claimed_by=claimed_by, lease_until=lease_until) for row in rows),
                  key=lambda c: c.id)


def _owned(c):
    return (OutboxEvent.id == c.id, OutboxEvent.status == PROCESSING,
            OutboxEvent.claimed_by == c.claimed_by, OutboxEvent.attempts == c.attempts)


def _relaxed_commit(session):
    """PostgreSQL: this transaction's commit need not wait for the WAL flush. A worker's
    claims and outcomes may be lost in a database crash, and that only means a row is
    delivered again (at-least-once, same idempotency key), never that one is lost;
    publishing, in the app's transaction, keeps full durability."""
    session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _settle(session, c, values):
    if session.get_bind().dialect.name == "postgresql":
        _relaxed_commit(session)
    result = session.execute(update(OutboxEvent).where(*_owned(c)).values(**values)
                             .execution_options(synchronize_session=False))
    session.commit()
    if result.rowcount != 1:
        log.warning("outbox event %s: claim lost before its outcome was recorded (lease expired?)", c.id)
        return False
    return True


def mark_done(session, c, now=None):
    now = now or utcnow()
    settled = _settle(session, c, {"status": DONE, "delivered_at": now, "lease_until": None,
                                   "last_error": None, "updated_at": now})
    if settled:
        metrics.inc("outbox_events", status=DONE)
        created_at = session.execute(select(OutboxEvent.created_at).where(OutboxEvent.id == c.id)).scalar()
        session.commit()  # end the read's transaction; nothing is pending
        if created_at is not None:
            metrics.observe("outbox_delivery_latency_seconds", max(0.0, (now - created_at).total_seconds()))
    return settled


def mark_failed(session, c, reason, *, permanent=False, retry_after=None, now=None):
    """After a failed attempt: dead at once when permanent or out of attempts, else pending
    with the next attempt time. Returns the new status, or None if the claim was lost."""
    now = now or utcnow()
    reason = (reason or "unknown error")[:2000]
    if permanent:
        values = {"status": DEAD, "last_error": reason}
    elif c.attempts >= c.max_attempts:
        values = {"status": DEAD, "last_error": f"{reason} (gave up after {c.attempts} attempts)"}
    else:
        delay = backoff_seconds(c.attempts)
        if retry_after:
            delay = max(delay, float(retry_after))
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


def backoff_seconds(attempts):
    """Exponential in the attempts made, with jitter: half fixed, half random, so retries of
    many events spread out but none comes back almost at once."""
    base = _config("OUTBOX_BACKOFF_BASE_SECONDS", 10)
    cap = _config("OUTBOX_BACKOFF_MAX_SECONDS", 3600)
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


# -- admin: look, retry, discard -----------------------------------------------------------


def counts(session):
    found = dict(session.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)).all())
    return {status: found.get(status, 0) for status in OUTBOX_STATUSES}


def filtered(query, status=None, type=None, key=None):
    if status:
        query = query.where(OutboxEvent.status == status)
    if type:
        query = query.where(OutboxEvent.type == type)
    if key:
        query = query.where(OutboxEvent.key == key)
    return query


def list_events(session, status=None, type=None, key=None, limit=50, offset=0):
    query = filtered(select(OutboxEvent), status, type, key).order_by(OutboxEvent.id.desc()).limit(limit).offset(offset)
    return session.execute(query).scalars().all()


def matching_ids(session, status=None, type=None, key=None):
    return session.execute(filtered(select(OutboxEvent.id), status, type, key).order_by(OutboxEvent.id)).scalars().all()


def retry(session, ids, now=None):
    """Dead or pending rows become due now with a fresh set of attempts; a real-time
    delivery is enqueued. Rows being delivered or done are left alone. Returns the count."""
    ids = [int(i) for i in ids]
    if not ids:
        return 0
    now = now or utcnow()
    result = session.execute(
        update(OutboxEvent).where(OutboxEvent.id.in_(ids), OutboxEvent.status.in_((DEAD, PENDING)))
        .values(status=PENDING, attempts=0, next_attempt_at=now, lease_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount:
        log.info("outbox: %s event(s) retried", result.rowcount)
        request_delivery(min(ids))
    return result.rowcount


def discard(session, ids):
    """Delete pending or dead rows (never one being delivered). Returns the count."""
    ids = [int(i) for i in ids]
    if not ids:
        return 0
    result = session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids), OutboxEvent.status.in_((DEAD, PENDING)))
                             .execution_options(synchronize_session=False))
    session.commit()
    if result.rowcount:
        log.info("outbox: %s event(s) discarded", result.rowcount)
    return result.rowcount


def event_dict(row):
    return {
        "id": row.id, "connection_id": row.connection_id, "type": row.type, "key": row.key,
        "payload": row.payload, "idempotency_key": row.idempotency_key, "status": row.status,
        "attempts": row.attempts, "max_attempts": row.max_attempts,
        "next_attempt_at": _iso(row.next_attempt_at), "last_error": row.last_error,
        "created_at": _iso(row.created_at), "delivered_at": _iso(row.delivered_at),
    }


def _iso(value):
    return value.isoformat() + "Z" if value else None


def _config(name, default):
    if has_app_context():
        return current_app.config.get(name, default)
    return default


# -- the circuit breaker -------------------------------------------------------------------

# KEYS: the destination's state hash, the set of destinations with state.
# ARGV: threshold, now (seconds), first cooldown, max cooldown, destination id.
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('SADD', KEYS[2], ARGV[5])
if failures < tonumber(ARGV[1]) then return 0 end
local now = tonumber(ARGV[2])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > now then return 0 end
local cooldown = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or ARGV[3])
redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown),
           'cooldown', tostring(math.min(cooldown * 2, tonumber(ARGV[4]))))
return 1
"""


class Breaker:
    """A circuit breaker per destination, in Redis so every worker on every machine agrees.

    closed: deliveries go. After `threshold` consecutive failures (errors that say the
    provider, not the event, is at fault) it opens for a cooldown: no worker claims that
    destination's rows, so their attempts are not burned. When the cooldown ends, one
    worker (the holder of a short probe lock) may try; success closes the breaker, failure
    opens it again with the cooldown doubled (up to a maximum).

    Redis trouble never stops deliveries: the breaker then counts as closed.
    """

    PREFIX = "synchub:outbox:breaker:"
    REGISTRY = "synchub:outbox:breakers"

    def __init__(self, client, threshold=5, cooldown=30.0, max_cooldown=600.0, probe_seconds=60.0, clock=time.time):
        self.client = client
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.probe_seconds = probe_seconds
        self.clock = clock
        self._script = client.register_script(_FAILURE) if client is not None else None
        self._probes = set()  # destinations whose probe this instance holds
        # Destinations with breaker state at the last look (or failures of our own since):
        # only those need a reset on success, which spares a Redis call per delivery.
        self._troubled = set()

    @classmethod
    def from_config(cls, client, config):
        # The probe lock outlives the probe's one request, but no more: the lock of a worker
        # killed while probing keeps every other worker off the destination until it lapses.
        probe_seconds = min(float(config.get("OUTBOX_LEASE_SECONDS", 120)),
                            2 * float(config.get("OUTBOX_HTTP_TIMEOUT_SECONDS", 10)) + 10)
        return cls(client, threshold=config.get("OUTBOX_BREAKER_THRESHOLD", 5),
                   cooldown=config.get("OUTBOX_BREAKER_COOLDOWN_SECONDS", 30),
                   max_cooldown=config.get("OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS", 600),
                   probe_seconds=probe_seconds)

    def blocked(self):
        """{destination id: reopen time (epoch seconds)} of destinations not to claim now.
        A half-open destination is not blocked for the one caller that wins its probe."""
        if self.client is None:
            return {}
        try:
            members = self.client.smembers(self.REGISTRY)
            self._troubled = {int(m) for m in members}
            blocked = {}
            now = self.clock()
            for member in members:
                destination = int(member)
                failures, open_until = self.client.hmget(self.PREFIX + str(destination), "failures", "open_until")
                failures, open_until = int(failures or 0), float(open_until or 0)
                if open_until > now:
                    blocked[destination] = open_until
                elif failures >= self.threshold and destination not in self._probes:
                    won = self.client.set(f"{self.PREFIX}{destination}:probe", 1, nx=True,
                                          px=int(self.probe_seconds * 1000))
                    if won:
                        self._probes.add(destination)
                    else:
                        blocked[destination] = now + min(self.cooldown, self.probe_seconds)
            return blocked
        except Exception as exc:
            log.warning("outbox breaker unavailable (%s): treating every destination as closed", type(exc).__name__)
            return {}

    def failure(self, destination):
        """Count a failure; True when this one opened the breaker."""
        if self._script is None:
            return False
        self._troubled.add(destination)
        try:
            opened = self._script(keys=[self.PREFIX + str(destination), self.REGISTRY],
                                  args=[self.threshold, self.clock(), self.cooldown, self.max_cooldown, destination])
            if destination in self._probes:
                self._probes.discard(destination)
                self.client.delete(f"{self.PREFIX}{destination}:probe")
            if opened:
                log.warning("outbox: destination %s keeps failing; breaker open", destination)
            return bool(opened)
        except Exception as exc:
            log.warning("outbox breaker unavailable (%s)", type(exc).__name__)
            return False

    def success(self, destination):
        if self.client is None or destination not in self._troubled:
            return
        self._probes.discard(destination)
        self._troubled.discard(destination)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.PREFIX + str(destination), f"{self.PREFIX}{destination}:probe")
            pipe.srem(self.REGISTRY, destination)
            pipe.execute()
        except Exception as exc:
            log.warning("outbox breaker unavailable (%s)", type(exc).__name__)

    def probing(self, destination):
        """True while this instance holds the destination's probe (half-open)."""
        return destination in self._probes

    def close(self, keep=()):
        """Hand back probe locks this instance won but will not use (its claim took no row
        of that destination), so another worker may probe at once. `keep`: destinations
        whose probe is about to be sent."""
        for destination in list(self._probes):
            if destination in keep:
                continue
            self._probes.discard(destination)
            try:
                self.client.delete(f"{self.PREFIX}{destination}:probe")
            except Exception:
                pass

    def open_until(self, destination):
        """When the breaker of this destination reopens for deliveries (None: closed)."""
        if self.client is None:
            return None
        try:
            value = self.client.hget(self.PREFIX + str(destination), "open_until")
        except Exception:
            return None
        value = float(value or 0)
        return value if value > self.clock() else None
