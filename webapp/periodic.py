"""The periodic jobs: what must happen every so often for synchub to keep its promises.

One list, read by the supervisor (scheduler/supervisor.py runs every job at its interval;
docs/SUPERVISOR.md) and by the cron endpoints (webapp/api/cron.py offers those marked
`cron` at POST /api/cron/<name>, for platforms without a supervisor daemon). A new
periodic job is one entry here.

Each job is a function of `now` (the caller's clock; None means the real time) and is safe
to run from several processes at once: it rests on conditional updates, unique indexes or
Redis NX keys. The supervisor runs its own version of two of them, which need its state:
tick (the lease; the heartbeat written after the due slots fired) and sweep (its own watch
of the runs' heartbeats, immune to clock jumps).

Operators add jobs without code: SYNCHUB_MAINTENANCE_JOBS="pkg.module.func=seconds,..."
enqueues each function by dotted name on the default queue, never twice while one is pending.
"""
import logging
from dataclasses import dataclass
from typing import Callable

from flask import current_app

from . import alerts, connection_issues, outbox, queue, recovery, redis_keys, retention, runs
from .schedules import firing
from .webhooks import dispatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    description: str
    every: object  # seconds, or the name of the setting that holds them; 0 turns the job off
    run: Callable  # run(now) -> what it did (the cron endpoint answers it as JSON)
    leader_only: bool = True  # the supervisor runs it only while it holds the lease
    cron: bool = False  # offered at POST /api/cron/<name>

    def interval(self, config):
        return float(config.get(self.every) or 0) if isinstance(self.every, str) else float(self.every)


def _fire_schedules(now):
    firing.plan_next_runs(now)
    return firing.fire_due(now, requested_by="cron")


def _sweep(now):
    return [{"run_id": run_id, "status": status} for run_id, status in runs.sweep_stale(now)]


def _promote(now):
    return {"queued": runs.promote_waiting(now)}


def _webhooks(now):
    return {"deliveries_enqueued": dispatch.dispatch_pending(now=now)}


def _outbox_drain(now):
    return outbox.enqueue_drain()


JOBS = (
    # Not leader-only: every supervisor ticks to take or renew the lease; it fires only while leading.
    PeriodicJob("tick", "queue the scheduled syncs that are due (one run per slot, whoever calls)",
                "SUPERVISOR_TICK_SECONDS", _fire_schedules, leader_only=False, cron=True),
    PeriodicJob("sweep", "settle running runs whose worker stopped sending heartbeats",
                "SWEEP_INTERVAL_SECONDS", _sweep, cron=True),
    # After the sweep: a follow-up whose predecessor's worker died starts once the sweep settled it.
    PeriodicJob("promote", "queue the waiting runs whose time has come or whose predecessor ended",
                "SUPERVISOR_TICK_SECONDS", _promote, cron=True),
    PeriodicJob("requeue_lost", "enqueue again the queued runs whose RQ job is gone",
                "SWEEP_INTERVAL_SECONDS", recovery.requeue_lost),
    PeriodicJob("reconcile_rq", "bring RQ's registries in line with the job table",
                "SWEEP_INTERVAL_SECONDS", recovery.reconcile_registries),
    PeriodicJob("webhooks", "enqueue the runs of webhook deliveries stored while Redis was down",
                "SWEEP_INTERVAL_SECONDS", _webhooks, cron=True),
    PeriodicJob("alerts", "open and clear alerts, and announce them",
                "ALERT_INTERVAL_SECONDS", alerts.sync_alerts),
    PeriodicJob("freshness", "open or resolve stale_data issues against each connection's freshness target",
                "FRESHNESS_INTERVAL_SECONDS", connection_issues.check_freshness, cron=True),
    PeriodicJob("cleanup", "delete history older than the retention windows",
                "RETENTION_INTERVAL_SECONDS", retention.cleanup, cron=True),
    # The drain has an endpoint of its own, POST /api/cron/outbox/drain (webapp/api/outbox.py).
    PeriodicJob("outbox_drain", "enqueue an outbox drain unless one waits in its queue",
                "OUTBOX_DRAIN_INTERVAL_SECONDS", _outbox_drain),
)
CRON_JOBS = {job.name: job for job in JOBS if job.cron}


def scheduled(config):
    """[(job, interval in seconds)]: the list, then the operators' maintenance jobs, each
    whose interval is not 0."""
    jobs = list(JOBS) + [maintenance_job(name, seconds)
                         for name, seconds in parse_maintenance_jobs(config.get("MAINTENANCE_JOBS"))]
    return [(job, job.interval(config)) for job in jobs if job.interval(config) > 0]


# -- operators' maintenance jobs ---------------------------------------------------------


def parse_maintenance_jobs(value):
    """"a.b.func=30,c.d.other=60" (or a list of (name, seconds)) -> ((name, seconds), ...)."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    jobs = []
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                continue
            name, sep, seconds = item.strip().partition("=")
            if not sep:
                raise ValueError(f"maintenance job {item!r}: write it as dotted.function=seconds")
        else:
            name, seconds = item
        name = name.strip()
        parts = name.split(".")
        if len(parts) < 2 or not all(p.isidentifier() for p in parts):
            raise ValueError(f"maintenance job {name!r}: needs a dotted function name like pkg.module.func")
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise ValueError(f"maintenance job {name!r}: interval {seconds!r} is not a number of seconds") from None
        if seconds <= 0:
            raise ValueError(f"maintenance job {name!r}: the interval must be positive")
        jobs.append((name, seconds))
    return tuple(jobs)


def maintenance_job(func_name, seconds):
    return PeriodicJob(f"maintenance:{func_name}", f"enqueue {func_name} unless it is pending", seconds,
                       lambda now: enqueue_maintenance(func_name))


def enqueue_maintenance(func_name):
    """Enqueue `func_name` unless its previous job is still pending (waiting or running).
    Returns the job, or None."""
    timeout = current_app.config["JOB_TIMEOUT_SECONDS"]
    job = queue.enqueue_unless_pending(
        redis_keys.key("maintenance", func_name), queue.DEFAULT, func_name, kind="maintenance",
        # A running job holds the marker, so it must not expire before RQ's timeout ends the job.
        marker_ttl=timeout + 60, running_is_pending=True,
        timeout=timeout, result_ttl=600, failure_ttl=24 * 3600, description=f"maintenance {func_name}")
    if job is None:
        log.debug("maintenance: %s still pending, not enqueued again", func_name)
    else:
        log.info("maintenance: enqueued %s", func_name)
    return job
