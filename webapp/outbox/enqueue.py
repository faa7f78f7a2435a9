"""Asking the workers for a drain: the real-time attempt after a commit (`request_delivery`)
and the periodic drain (`enqueue_drain`), each queued only when no job of its kind waits
in its queue (`_kicked`). docs/OUTBOX.md, "Sending".

This file is kept as it was when the outbox became a package: it is to be replaced by the
one "enqueue unless pending" helper of webapp/queue.py.
"""
import logging
import time
import uuid

from flask import current_app, has_app_context
from rq.job import Job

from ..extensions import redis_ext
from .breaker import Breaker

log = logging.getLogger(__name__)

DELIVER_EVENT = "worker.jobs.deliver_event"
DRAIN_OUTBOX = "worker.jobs.drain_outbox"
# "<job id> <set at>" of a delivery job enqueued and not yet started: while that job still
# waits in its queue, a new event needs no other job, because that job claims after our
# commit and so will see it (see _kicked for when the flag is stale).
KICK_KEY = "synchub:outbox:kick"
DRAIN_KICK_KEY = "synchub:outbox:drain-queued"
# Drains at work: member = claimer, score = when its announcement lapses (epoch seconds).
DRAINING_KEY = "synchub:outbox:draining"


def request_delivery(event_id=None, destinations=(), client=None):
    """Enqueue the real-time delivery attempt for a commit's new events, unless that is
    pointless: a delivery job is waiting in its queue (it claims after this commit, so it
    will see the events), as many drains as we allow are running (each claims once more
    after it stops announcing itself, see worker/outbox_sender.py), or every destination
    involved has its breaker open (the periodic drain probes it later).
    Never raises: when Redis is down the events simply wait for the periodic drain."""
    if client is None and not has_app_context():
        # A session committed outside the app (a script's own Session, or after its app
        # context ended) has neither the app's settings nor its Redis client.
        log.warning("outbox event %s: no app context after commit; left for the periodic drain", event_id)
        return False
    try:
        client = client or redis_ext.client
        now = time.time()
        if destinations and all(Breaker.from_config(client, current_app.config).open_until(d) for d in destinations):
            return False
        if client.zcount(DRAINING_KEY, now, "+inf") >= current_app.config["OUTBOX_PARALLEL_DRAINS"]:
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
    from ..queue import queue

    target = queue(queue_name, connection=client)
    job_id = f"outbox-{uuid.uuid4().hex}"
    if not client.register_script(_KICK)(keys=[flag, target.intermediate_queue_key],
                                         args=[job_id, ttl, _ENQUEUE_GRACE_SECONDS, Job.redis_job_namespace_prefix]):
        return None
    try:
        return target.enqueue_call(
            function, args=args, job_id=job_id, description=description, result_ttl=600, failure_ttl=7 * 24 * 3600,
            timeout=int(current_app.config["OUTBOX_DRAIN_BUDGET_SECONDS"] + current_app.config["OUTBOX_LEASE_SECONDS"] + 60),
        )
    except Exception:
        client.delete(flag)
