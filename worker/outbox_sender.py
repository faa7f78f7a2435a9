"""The outbox sender: claim due rows, send each through its destination's connector, record
the outcome (docs/OUTBOX.md, "Sending"). The rules are in webapp/outbox/ (claim.py:
claim, lease, per-key order, backoff, dead letters; breaker.py: the circuit breaker);
this is the loop that applies them. One run of it is a drain.

A drain claims batches until nothing is due or its time budget is spent; it never
sleeps waiting for a retry, because the next attempt time is in the row. The successes of
a batch are committed together when the batch is through (a failure, a release at once),
so a worker that dies mid-batch leaves at most a batch of rows whose requests went out
but whose outcomes were not written: they are claimed again once their leases expire and
sent again with the same idempotency keys (docs/OUTBOX.md). The next row of a key is
claimable only after that commit, so per-key order holds.

A batch's requests to a healthy destination whose connector allows it (`concurrent_sends`)
go out side by side, up to OUTBOX_SEND_CONCURRENCY at once: a claim never holds two rows of
one key (a row waits while an older row of its key is pending or processing), so they cannot
overtake each other. Only the requests run in threads; every outcome, breaker decision and
database write is made here, one at a time. A destination that is half-open (this drain
holds its probe) or has failures on record gets one request at a time, as before; the first
failure during a concurrent batch stops the requests of that destination not yet started,
and they are sent one at a time after it; no more requests are in flight than the breaker's
threshold (docs/OUTBOX.md, "Sending").
"""
import collections
import contextvars
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from queue import Empty, SimpleQueue

from flask import current_app
from sqlalchemy import update

from webapp import retry_policy
from webapp.connectors import connector_class
from webapp.connectors.base import Services
from webapp.connectors.http import POOL_SIZE
from webapp.connectors.errors import RateLimited
from webapp.extensions import db
from webapp.models import Connection, utcnow
from webapp.outbox.breaker import Breaker
from webapp.outbox.claim import claim, mark_done_many, mark_failed, release
from webapp import queue
from webapp.outbox.enqueue import active_senders_key, drain_job_marker, request_sending, send_job_marker
from webapp.outbox.statuses import DEAD

from .outbox_pace import Pace

log = logging.getLogger(__name__)

@dataclass
class DrainResult:
    claimed: int = 0
    done: int = 0
    retrying: int = 0
    dead: int = 0
    released: int = 0  # handed back untried (breaker open, lease too short)
    lost: int = 0  # our claim had been taken over before we could record the outcome

    def as_dict(self):
        return asdict(self)


def run_send_event_job(event_id, *, redis_client, worker_name=None):
    """RQ job: the real-time attempt for `event_id`, then whatever else is due."""
    _release(redis_client, send_job_marker())
    return drain(redis_client=redis_client, worker_name=worker_name, first_event_id=event_id).as_dict()


def run_send_due_job(*, redis_client, worker_name=None):
    """RQ job: send everything due (the periodic drain)."""
    _release(redis_client, drain_job_marker())
    return drain(redis_client=redis_client, worker_name=worker_name).as_dict()


def _release(client, marker):
    # From here on this job claims after any commit that found the marker set, so those
    # events are covered; new ones must enqueue another job.
    try:
        queue.release(marker, client)
    except Exception as exc:
        log.warning("outbox: could not release %s (%s)", marker, type(exc).__name__)


def drain(*, redis_client=None, worker_name=None, first_event_id=None, budget_seconds=None, max_events=None):
    """Send due rows until none is left or the budget (seconds) is spent."""
    return OutboxSender(redis_client=redis_client, worker_name=worker_name).drain(
        first_event_id=first_event_id, budget_seconds=budget_seconds, max_events=max_events)


class OutboxSender:
    """One drain: claims batches and sends them until nothing is due or its budget is spent."""

    def __init__(self, *, redis_client, worker_name=None):
        self.config = current_app.config
        self.session = db.session
        self.redis = redis_client
        # Unique per drain, so even a later drain of the same worker is a different claimer.
        self.claimer = f"{worker_name or 'worker'}/{uuid.uuid4().hex[:8]}"
        self.active_key = active_senders_key()
        self.breaker = Breaker.from_config(redis_client, self.config)
        self.lease_seconds = float(self.config["OUTBOX_LEASE_SECONDS"])
        self.batch = int(self.config["OUTBOX_CLAIM_BATCH"])
        # An announcement outlives the slowest request, refreshed before each one.
        self.announce_seconds = 2 * float(self.config["OUTBOX_HTTP_TIMEOUT_SECONDS"]) + 10
        self._announced_until = 0.0
        self.result = DrainResult()
        self._destinations = {}  # connection id -> connector, or the exception building it raised
        self._delivered = []  # [(claimed row, accepted at)] whose outcome is not yet written
        # Requests in flight at once; the HTTP session keeps POOL_SIZE connections per host.
        self.concurrency = max(1, min(POOL_SIZE, int(self.config["OUTBOX_SEND_CONCURRENCY"])))
        self._pool = None  # the threads that send, made for the first concurrent batch
        # Side by side only while it pays (worker/outbox_pace.py).
        self.pace = Pace(self.concurrency > 1)
        # What the sending threads finished, for this thread to record: a queue is cheaper
        # than waiting on the futures, which builds a waiter per call for all in flight.
        self._finished = SimpleQueue()
        self._next = []  # the next batch, claimed while this one's last requests were in flight
        # One at a time (see Pace), a batch's database work is done in a thread of its own while
        # the drain sends: the next batch's claim and the last batch's successes
        # (_claim_ahead, _record_delivered). The bookkeeper runs them in the order given, each
        # in a session of its own.
        self.app = current_app._get_current_object()
        self._bookkeeper = None
        self._ahead = None  # (the next batch's claim in the bookkeeper: a Future) or None
        self._settling = []  # [(delivered rows, Future of their outcome write)] not yet counted

    def drain(self, first_event_id=None, budget_seconds=None, max_events=None):
        budget = self.config["OUTBOX_DRAIN_BUDGET_SECONDS"] if budget_seconds is None else budget_seconds
        deadline = time.monotonic() + budget

        def budget_left():
            return time.monotonic() < deadline and (max_events is None or self.result.claimed < max_events)

        def next_limit():
            """How many rows the next claim may take; 0 once the budget is spent."""
            if not budget_left():
                return 0
            full = self.pace.batch_limit(self.batch)
            return full if max_events is None else min(full, max_events - self.result.claimed)

        def claim_next():
            """The next batch, if the budget allows one."""
            limit = next_limit()
            return self._claim(limit=limit) if limit else []

        try:
            self._announce()
            if first_event_id is not None:
                self._run(self._claim(event_id=first_event_id), claim_next, next_limit)
            while True:
                self.pace.batch_started()
                # A batch claimed while the last requests of the previous one were in flight
                # is sent whatever the budget says now: it was claimed within it.
                batch = self._take_next()
                if not batch:
                    if not budget_left():
                        if max_events is None and self.redis is not None:
                            # Out of time with work perhaps left: a fresh job carries on.
                            self._retire()
                            request_sending(client=self.redis)
                        break
                    batch = claim_next()
                if not batch:
                    # Stop announcing, then look once more: a publisher that saw us announced
                    # skipped its own job, and its commit came before this claim.
                    self._retire()
                    batch = self._claim(limit=self.batch)
                    if not batch:
                        break
                    self._announce()
                self._run(batch, claim_next, next_limit)
                self.pace.batch_done(len(batch))
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._give_back_next()
            if self._bookkeeper is not None:
                self._bookkeeper.shutdown(wait=True)
            self._retire()
            self.breaker.close()
            for connector in self._destinations.values():
                if hasattr(connector, "close"):
                    connector.close()
        return self.result

    def _claim(self, limit=1, event_id=None):
        claimed = claim(self.session, self.claimer, limit=limit, event_id=event_id,
                        lease_seconds=self.lease_seconds, skip_connections=self.breaker.blocked())
        self.breaker.claimed({c.connection_id for c in claimed})
        return claimed

    def _announce(self, refresh=False):
        """Tell publishers a drain is at work (so they need not enqueue one), for a while.
        `refresh`: only when half of the last announcement has run out."""
        if self.redis is None:
            return
        now = time.time()
        if refresh and now < self._announced_until - self.announce_seconds / 2:
            return
        try:
            self.redis.zadd(self.active_key, {self.claimer: now + self.announce_seconds})
            self._announced_until = now + self.announce_seconds
        except Exception as exc:
            log.warning("outbox: could not announce the drain (%s)", type(exc).__name__)

    def _retire(self):
        if self.redis is None:
            return
        self._announced_until = 0.0
        try:
            self.redis.zrem(self.active_key, self.claimer)
            self.redis.zremrangebyscore(self.active_key, "-inf", time.time())  # lapsed, e.g. killed workers
        except Exception as exc:
            log.warning("outbox: could not retire the drain (%s)", type(exc).__name__)

    def _give_back_next(self):
        """At a drain's end: count the outcomes its bookkeeper wrote, and give back untried a
        batch claimed ahead (there is one only when the drain ends by an error)."""
        try:
            self._take_next(into_next=True)
            self._count_settled(wait=True)
        except Exception as exc:  # what is left lapses with its lease, and is sent again
            log.warning("outbox: the drain's last database work failed (%s)", type(exc).__name__)
        pending, self._next = self._next, []
        for claimed in pending:
            try:
                self._release(claimed, None)
            except Exception as exc:  # the rows are claimed again once their lease expires
                log.warning("outbox event %s not given back (%s)", claimed.id, type(exc).__name__)
                self.session.rollback()

    def _run(self, batch, claim_next=None, next_limit=None):
        """Send a claimed batch and record the outcomes. `claim_next`: claims the batch after
        it; called (once) while the last requests of a side-by-side batch are in flight, so
        the claim's database round trips overlap them (see _send_side_by_side). One at a
        time, the next batch (of `next_limit()` rows) is claimed by the bookkeeper while this
        one is sent, and this one's successes are written by it while the next is sent."""
        self.result.claimed += len(batch)
        in_background = False
        try:
            if self.pace.side_by_side:
                one_at_a_time = self._send_side_by_side(batch, claim_next)
            else:
                one_at_a_time = batch
                in_background = next_limit is not None and self._claim_ahead(next_limit())
            for claimed in one_at_a_time:
                if self._may_start(claimed):
                    self._announce(refresh=True)
                    self._send(claimed)
        finally:
            self._settle_rate_limits()
            self._record_delivered(in_background=in_background)

    # -- the bookkeeper: a batch's database work beside the next batch's requests ----------

    def _claim_ahead(self, limit):
        """Have the bookkeeper claim the next batch while this one is sent one at a time;
        whether it does. Not while a breaker opened since the last claim: claiming reads the
        breakers afresh (Breaker.blocked), and this batch's rows of that destination must
        still be held back (held_until)."""
        if not limit or self.breaker.opened_since_claim():
            return False
        skip = self.breaker.blocked()
        self._ahead = self._bookkeeping(claim, self.claimer, limit=limit, lease_seconds=self.lease_seconds,
                                        skip_connections=skip)
        return True

    def _take_next(self, into_next=False):
        """The batch claimed ahead, by the side-by-side pass or by the bookkeeper (waiting for
        it); `into_next`: leave it in self._next."""
        if self._ahead is not None:
            future, self._ahead = self._ahead, None
            claimed = future.result()
            self.breaker.claimed({c.connection_id for c in claimed})
            self._next = self._next + claimed
        self._count_settled()
        if into_next:
            return self._next
        batch, self._next = self._next, []
        return batch

    def _bookkeeping(self, work, *args, **kwargs):
        """Run `work(session, *args, **kwargs)` in the bookkeeper's thread, in an app context
        and session of its own; returns its Future."""
        if self._bookkeeper is None:
            self._bookkeeper = ThreadPoolExecutor(1, thread_name_prefix="outbox-bookkeeper")

        def in_own_session():
            with self.app.app_context():
                try:
                    return work(db.session, *args, **kwargs)
                finally:
                    db.session.remove()
        return self._bookkeeper.submit(contextvars.copy_context().run, in_own_session)

    def _count_settled(self, wait=False):
        """Count the outcome writes the bookkeeper finished (all of them, waiting: `wait`)."""
        still = []
        for delivered, future in self._settling:
            if wait or future.done():
                self._counted(delivered, future.result())
            else:
                still.append((delivered, future))
        self._settling = still

    def _settle_rate_limits(self):
        # A request's rate-limit slot is settled by the next admission; none follows until the
        # next batch, so settle now rather than hold the slots through the database work.
        for connector in self._destinations.values():
            if hasattr(connector, "settle_rate_limit"):
                try:
                    connector.settle_rate_limit()
                except Exception as exc:  # a slot not settled lapses on its own (ratelimit.py)
                    log.warning("outbox: rate-limit slots not settled (%s)", type(exc).__name__)

    def _may_start(self, claimed):
        """Whether to send a claimed row now; if not, it is given back untried."""
        held_until = self.breaker.held_until(claimed.connection_id)
        used = time.monotonic() - claimed.claimed_at
        if held_until is not None:
            self._release(claimed, held_until)
            return False
        if used > self.lease_seconds / 2:
            # Too little of the lease is left to start a request that another worker
            # could not also start: give the row back instead.
            self._release(claimed, None)
            return False
        if used > self.lease_seconds / 4:
            self._record_delivered()  # slow requests: write outcomes well within the lease
        return True

    def _send_side_by_side(self, batch, claim_next=None):
        """Send the rows of healthy destinations that allow it side by side; return the rows
        left to send one at a time, in claim order.

        At most as many requests are in flight as the breaker's threshold: if every one of
        them fails, the breaker opens after exactly `threshold` failures, as when they went
        one at a time, so an outage still costs no more attempts than that (docs/OUTBOX.md,
        "Failures"). After a destination's first failure its rows not yet started wait for
        the one-at-a-time pass, where an opened breaker gives them back untried.

        Once every row has been started and none has failed, the next batch is claimed
        while the last requests are in flight. It cannot hold a row of a key this batch
        holds (those are still processing), so per-key order is kept; a breaker that opens
        meanwhile holds its rows back as for any batch (`held_until`)."""
        side_by_side = [c for c in batch if self._concurrent(c.connection_id)]
        if len(side_by_side) < 2:
            return batch
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox-send")
        width = max(1, min(self.concurrency, self.breaker.threshold))
        waiting = collections.deque(side_by_side)
        together = {c.id for c in side_by_side}  # ids: comparing the rows themselves was 49,000 __eq__ a drain
        later = {c.id for c in batch if c.id not in together}
        failed = set()  # destinations that failed during this batch
        in_flight = 0
        while waiting or in_flight:
            while waiting and in_flight < width:
                claimed = waiting.popleft()
                if claimed.connection_id in failed:
                    later.add(claimed.id)
                elif self._may_start(claimed):
                    self._announce(refresh=True)
                    self._pool.submit(self._attempt, claimed)
                    in_flight += 1
            if not in_flight:
                break
            if claim_next is not None and not waiting and not failed and len(later) == 0:
                self._next, claim_next = claim_next(), None
            finished = [self._finished.get()]
            while True:
                try:
                    finished.append(self._finished.get_nowait())
                except Empty:
                    break
            in_flight -= len(finished)
            for claimed, connector, exc, note, accepted_at in sorted(finished, key=lambda f: f[0].id):
                if exc is not None:
                    failed.add(claimed.connection_id)
                self._outcome(claimed, connector, exc, note, accepted_at)
        return [c for c in batch if c.id in later]

    def _attempt(self, claimed):
        """One row's request, in a sending thread; puts (row, connector, exception or None,
        note, acceptance time) on the finished queue. Touches neither the database nor the
        breaker."""
        connector = self._destinations[claimed.connection_id]
        # Whatever happens, the drain's thread hears of this row (it waits for every one).
        outcome = (claimed, connector, RuntimeError("the sending thread stopped"), None, None)
        try:
            outcome = (claimed, connector, None, self._request(connector, claimed), utcnow())
        except Exception as exc:
            outcome = (claimed, connector, exc, None, None)
        finally:
            self._finished.put(outcome)

    def _concurrent(self, destination):
        """Whether rows of `destination` may be sent side by side: its connector allows it
        and its breaker has nothing on record (not half-open with our probe, no failures at
        the last look, not opened during this batch)."""
        if not self.breaker.healthy(destination):
            return False
        try:
            connector = self._destination(destination)
        except Exception:
            return False  # sent one at a time, where the error becomes the row's outcome
        return getattr(connector, "concurrent_sends", False)  # _destinations now holds it

    def _record_delivered(self, in_background=False):
        """Write the successes not yet written: here, or by the bookkeeper (`in_background`:
        counted once it is through, see _count_settled)."""
        delivered, self._delivered = self._delivered, []
        if in_background and delivered:
            self._settling.append((delivered, self._bookkeeping(mark_done_many, delivered)))
            return
        self._counted(delivered, mark_done_many(self.session, delivered))

    def _counted(self, delivered, outcomes):
        for (claimed, _), settled in zip(delivered, outcomes):
            if settled:
                self.result.done += 1
                log.debug("outbox event %s sent", claimed.id)
            else:
                self.result.lost += 1

    def _release(self, claimed, not_before, reason=None):
        if release(self.session, claimed, not_before, reason):
            self.result.released += 1
        else:
            self.result.lost += 1

    def _send(self, claimed):
        connector = None
        try:
            connector = self._destination(claimed.connection_id)
            note = self._request(connector, claimed)
        except Exception as exc:
            self._outcome(claimed, connector, exc)
        else:
            self._outcome(claimed, connector, None, note, utcnow())

    def _outcome(self, claimed, connector, exc, note=None, accepted_at=None):
        """Record what one request came to: the exception it raised, or (exc None) the
        destination's acceptance, at `accepted_at`."""
        destination = claimed.connection_id
        if exc is not None:
            # What the failure becomes is webapp/retry_policy.py's decision ("outbox").
            verdict = retry_policy.for_outbox(
                exc, getattr(connector, "permanent_statuses", retry_policy.PERMANENT_STATUSES))
            if verdict.unexpected:
                log.error("outbox event %s: unexpected error", claimed.id, exc_info=exc)
            if verdict.needs_reauth:
                self._needs_reauth(destination, exc)
            if verdict.provider_answered:
                self.breaker.success(destination)  # the provider is up; the request is wrong
            if verdict.outcome == "dead":
                self._failed(claimed, verdict.reason, permanent=True)
            elif verdict.outcome == "retry":
                self._failed(claimed, verdict.reason, retry_after=verdict.retry_after)
            else:
                self._provider_failed(claimed, verdict.reason)
        else:
            self.breaker.success(destination)
            log.debug("outbox event %s: %s", claimed.id, note)
            self._delivered.append((claimed, accepted_at))

    def _request(self, connector, claimed):
        """The destination's request for one row; returns once the destination accepted it."""
        try:
            return connector.send(claimed.payload, claimed.idempotency_key)
        except RateLimited as exc:
            wait = 1.0 if exc.retry_after is None else exc.retry_after
            if wait > retry_policy.OUTBOX_INLINE_RATE_LIMIT_WAIT:
                raise
            time.sleep(wait)
            return connector.send(claimed.payload, claimed.idempotency_key)

    def _provider_failed(self, claimed, reason):
        """A failure that says the destination is unwell: its breaker decides whether the
        attempt is spent (webapp/outbox/breaker.py)."""
        destination = claimed.connection_id
        if self.breaker.request_failed(destination):
            self._failed(claimed, str(reason))
        else:
            self._release(claimed, self.breaker.held_until(destination) or utcnow(),
                          f"{reason} (breaker probe: attempt not counted)")

    def _failed(self, claimed, reason, permanent=False, retry_after=None):
        status = mark_failed(self.session, claimed, reason, permanent=permanent, retry_after=retry_after)
        if status is None:
            self.result.lost += 1
        elif status == DEAD:
            self.result.dead += 1
            log.warning("outbox event %s is dead: %s", claimed.id, reason)
        else:
            self.result.retrying += 1

    def _destination(self, connection_id):
        cached = self._destinations.get(connection_id)
        if cached is None:
            try:
                cached = self._build(connection_id)
            except Exception as exc:
                cached = exc
            finally:
                self.session.commit()  # end the read: the outcome's write starts a fresh transaction
            self._destinations[connection_id] = cached
        if isinstance(cached, Exception):
            raise cached
        return cached

    def _build(self, connection_id):
        connection = self.session.get(Connection, connection_id)
        if connection is None:
            raise retry_policy.Unsendable(f"connection {connection_id} no longer exists")
        cls = connector_class(connection.connector)
        if not hasattr(cls, "send"):
            raise retry_policy.Unsendable(f"connection {connection.name!r} ({connection.connector}) "
                             "cannot send outbound events")
        services = Services(config=dict(self.config), redis=self.redis, connection_id=connection_id)
        return cls(connection.settings or {}, connection.credentials, services)

    def _needs_reauth(self, connection_id, exc):
        self.session.execute(
            update(Connection).where(Connection.id == connection_id, Connection.health != "needs_reauth")
            .values(health="needs_reauth", health_message=str(exc)[:500])
            .execution_options(synchronize_session=False)
        )
        self.session.commit()
