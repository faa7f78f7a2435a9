"""Asking the workers to send: the real-time attempt after a commit (`request_sending`) and
the periodic drain (`enqueue_drain`), each enqueued only when no job of its kind waits in
its queue (webapp/queue.py, enqueue_unless_pending). docs/OUTBOX.md, "Sending".

A waiting job covers every commit made before it starts, because it claims after them; it
releases its marker when it starts (worker/outbox_sender.py), so a commit after that
enqueues another. A marker whose job no longer waits (started on a worker killed since,
finished, vanished, or popped by a worker that died before starting it) is replaced at once:
trusting it until its expiry held back every send for that long.
"""
import logging
import time

from flask import current_app, has_app_context

from .. import queue, redis_keys
from ..extensions import redis_ext
from .breaker import Breaker

log = logging.getLogger(__name__)

SEND_EVENT = "worker.jobs.send_outbox_event"
SEND_DUE = "worker.jobs.send_due_outbox_events"


def send_job_marker():
    """Names the real-time sending job that waits in its queue, if any."""
    return redis_keys.key("outbox", "send-job")


def drain_job_marker():
    """Names the periodic drain job that waits in its queue, if any."""
    return redis_keys.key("outbox", "drain-job")


def active_senders_key():
    """Sending jobs at work: member = claimer, score = when its announcement lapses (epoch s)."""
    return redis_keys.key("outbox", "sending")


def request_sending(event_id=None, destinations=(), client=None):
    """Enqueue the real-time attempt for a commit's new events, unless that is pointless: a
    sending job waits in its queue (it claims after this commit, so it will see the events),
    as many senders as we allow are at work (each claims once more after it stops announcing
    itself, see worker/outbox_sender.py), or every destination involved has its breaker open
    (the periodic drain probes it later).
    Never raises: when Redis is down the events simply wait for the periodic drain."""
    if client is None and not has_app_context():
        # A session committed outside the app (a script's own Session, or after its app
        # context ended) has neither the app's settings nor its Redis client.
        log.warning("outbox event %s: no app context after commit; left for the periodic drain", event_id)
        return False
    try:
        client = client or redis_ext.client
        if destinations and all(Breaker.from_config(client, current_app.config).open_until(d) for d in destinations):
            return False
        if client.zcount(active_senders_key(), time.time(), "+inf") >= current_app.config["OUTBOX_PARALLEL_DRAINS"]:
            return False
        job = queue.enqueue_unless_pending(
            send_job_marker(), queue.HIGH, SEND_EVENT, marker_ttl=120, args=(event_id,), kind="outbox",
            connection=client, **_job_options(f"send outbox event {event_id}" if event_id else "send outbox events"))
        return job is not None
    except Exception as exc:  # redis errors of any kind: the row is the source of truth
        log.warning("outbox event %s waits for the drain: enqueue failed (%s)", event_id, type(exc).__name__)
        return False


def enqueue_drain(client=None):
    """Enqueue a drain job unless one waits in its queue. Returns the job id or None.
    Raises on Redis errors (callers say so: the cron endpoint answers 503).

    This is the periodic drain (the supervisor's step, the cron endpoint): the only thing
    that claims rows nobody is sending, i.e. a dead worker's expired leases and retries
    that came due after every sender ended. So it is never held back by a drain that has
    started: that one may belong to a worker killed since (RQ calls its job "started" for
    another 90 s, and its drain never claims again), and drains side by side are safe."""
    job = queue.enqueue_unless_pending(drain_job_marker(), queue.DEFAULT, SEND_DUE, marker_ttl=300, kind="outbox",
                                       connection=client or redis_ext.client, **_job_options("drain the outbox"))
    return job.id if job is not None else None


def _job_options(description):
    config = current_app.config
    return dict(description=description, result_ttl=600, failure_ttl=7 * 24 * 3600,
                timeout=int(config["OUTBOX_DRAIN_BUDGET_SECONDS"] + config["OUTBOX_LEASE_SECONDS"] + 60))
