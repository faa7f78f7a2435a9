"""The supervisor loop: small step functions, run on their cadence by the `schedule` library.

Every step takes `now` from the injected clock (business time: slots, heartbeats, alert
windows); the cadence and the leader lease use real time. Tests call the steps directly
with any `now`, so they never sleep through an hour.

    tick            every SUPERVISOR_TICK_SECONDS, every supervisor:
                      renew/take the lease; if leading, plan and fire due schedules;
                      write the heartbeat (Redis key + `supervisors` row)
    sweep           leader, every SWEEP_INTERVAL_SECONDS: stale running runs -> requeued or failed
    requeue_lost    leader, same cadence: queued runs whose RQ job is gone -> enqueued again
    reconcile_rq    leader, same cadence: RQ registries brought in line with the job table
    alerts          leader, every ALERT_INTERVAL_SECONDS: open/clear alerts, notify
    retention       leader, every RETENTION_INTERVAL_SECONDS: delete old history
    outbox_drain    leader, every OUTBOX_DRAIN_INTERVAL_SECONDS: a drain job, unless one waits queued
    maintenance:*   leader, each at its own interval: RQ jobs enqueued by dotted name
"""
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import redis
import schedule as schedule_lib
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from webapp import alerts, outbox, retention, runs
from webapp.extensions import db, redis_ext
from webapp.models import SupervisorState
from webapp.queue import DEFAULT, queue
from webapp.schedules import firing

from . import recovery
from .clock import system_clock
from .leader import Lease

log = logging.getLogger("scheduler")

# Periodic maintenance jobs: (dotted function name, interval in seconds or the config key
# holding it; 0 turns a job off), enqueued by the leader on the default queue and executed
# by the RQ workers. Add new ones here; operators can add more without code through
# SYNCHUB_MAINTENANCE_JOBS="pkg.module.func=seconds,...".
MAINTENANCE_JOBS = ()  # the outbox drain is a step of its own (outbox_drain)

HEARTBEAT_KEY = "synchub:supervisors:heartbeat:{name}"
# RQ states in which a maintenance job is still pending: don't pile another on top.
_PENDING_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


@dataclass(frozen=True)
class Step:
    name: str
    interval: float  # seconds of real time between runs
    func: Callable[[datetime], object]
    leader_only: bool = True


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


class Supervisor:
    def __init__(self, app, name=None, clock=None, monotonic=time.monotonic):
        self.app = app
        self.monotonic = monotonic
        self._heartbeats = {}  # run_id -> (heartbeat_at seen, monotonic time it was first seen)
        self.config = app.config
        self.name = name or f"{socket.gethostname()}.{os.getpid()}"
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.clock = clock or system_clock
        self.leading = False
        self.maintenance_jobs = self._maintenance_jobs()
        self._stop = threading.Event()
        self._lease = None

    def _maintenance_jobs(self):
        jobs = []
        for name, interval in MAINTENANCE_JOBS:
            seconds = float(self.config.get(interval) or 0) if isinstance(interval, str) else interval
            if seconds > 0:
                jobs.append((name, seconds))
        return tuple(jobs) + parse_maintenance_jobs(self.config.get("MAINTENANCE_JOBS"))

    @property
    def redis(self):
        return redis_ext.client

    @property
    def lease(self):
        if self._lease is None:
            self._lease = Lease(self.redis, self.name, self.config["LEADER_TTL_SECONDS"])
        return self._lease

    # -- the steps -------------------------------------------------------------------------

    def steps(self):
        c = self.config
        sweep_every = c["SWEEP_INTERVAL_SECONDS"]
        return [
            Step("tick", c["SUPERVISOR_TICK_SECONDS"], self.tick, leader_only=False),
            Step("sweep", sweep_every, self.sweep),
            Step("requeue_lost", sweep_every, self.requeue_lost),
            Step("reconcile_rq", sweep_every, self.reconcile_rq),
            Step("webhooks", sweep_every, self.process_webhooks),
            Step("alerts", c["ALERT_INTERVAL_SECONDS"], self.check_alerts),
            Step("retention", c["RETENTION_INTERVAL_SECONDS"], self.cleanup),
        ] + ([Step("outbox_drain", c["OUTBOX_DRAIN_INTERVAL_SECONDS"], self.drain_outbox)]
             if c.get("OUTBOX_DRAIN_INTERVAL_SECONDS") else []) + [
            Step(f"maintenance:{name}", interval, self._maintenance_step(name))
            for name, interval in self.maintenance_jobs
        ]

    def tick(self, now=None):
        """One beat: leadership, due schedules (when leading), heartbeat. The heartbeat is
        written last, so a row's last_tick_at=T says this tick's work for time T is done."""
        now = now or self.clock()
        self.lead()
        try:
            outcomes = self.enqueue_due(now) if self.leading else []
            self.heartbeat(now)
        except Exception:
            # This supervisor can't do its job (its database is unreachable, say): hand the
            # lease to one that can instead of holding it while failing.
            if self.leading:
                self.lease.release()
                self.leading = False
                log.warning("leader: supervisor=%s gave up leadership after a failed tick", self.name)
            raise
        return outcomes

    def lead(self):
        was_leading, self.leading = self.leading, self.lease.acquire_or_renew()
        if self.leading and not was_leading:
            log.warning("leader: supervisor=%s promoted to leader", self.name)
        elif was_leading and not self.leading:
            log.warning("leader: supervisor=%s lost leadership", self.name)
        return self.leading

    def enqueue_due(self, now):
        firing.plan_next_runs(now)
        outcomes = firing.fire_due(now, requested_by="supervisor")
        for o in outcomes:
            slot = o.slot.isoformat(timespec="minutes")
            missed = f" ({o.missed} slots coalesced into one run)" if o.missed > 1 else ""
            if o.action == "enqueued":
                log.info("schedule: enqueued run=%s connection=%s slot=%s next=%s%s", o.run_id, o.connection, slot,
                         o.next_run_at.isoformat(timespec="minutes"), missed)
            elif o.action == "skipped_active":
                log.info("schedule: skipped connection=%s slot=%s: run=%s is still active", o.connection, slot, o.run_id)
            elif o.action == "refused":
                log.warning("schedule: refused connection=%s slot=%s: %s", o.connection, slot, o.reason)
            else:
                log.debug("schedule: slot connection=%s slot=%s taken by another supervisor", o.connection, slot)
        return outcomes

    def heartbeat(self, now):
        try:
            self.redis.set(HEARTBEAT_KEY.format(name=self.name),
                           json.dumps({"at": now.isoformat() + "Z", "leader": self.leading, "pid": self.pid,
                                       "host": self.hostname}),
                           ex=max(1, int(self.config["ALERT_SUPERVISOR_SILENT_SECONDS"])))
        except redis.RedisError as exc:
            log.warning("heartbeat: Redis unavailable (%s); the database heartbeat still counts", type(exc).__name__)
        self._write_state(now, self.leading)

    def _write_state(self, now, leading):
        values = dict(last_tick_at=now, is_leader=leading, hostname=self.hostname, pid=self.pid)
        result = db.session.execute(update(SupervisorState).where(SupervisorState.name == self.name)
                                    .values(**values).execution_options(synchronize_session=False))
        if result.rowcount == 0:
            db.session.add(SupervisorState(name=self.name, started_at=now, **values))
        if leading:  # a killed leader cannot clear its own flag
            db.session.execute(update(SupervisorState)
                               .where(SupervisorState.name != self.name, SupervisorState.is_leader.is_(True))
                               .values(is_leader=False).execution_options(synchronize_session=False))
        try:
            db.session.commit()
        except IntegrityError:  # two processes started with one --name: the later one updates
            db.session.rollback()
            db.session.execute(update(SupervisorState).where(SupervisorState.name == self.name).values(**values))
            db.session.commit()

    def sweep(self, now=None):
        # Staleness is how long a run's heartbeat has stayed unchanged on this process's
        # monotonic clock, never a comparison of wall clocks: a supervisor whose clock jumps
        # (or runs ahead of the workers') cannot declare a healthy run lost. A new leader
        # starts watching from scratch, so it sweeps at most STALE_AFTER later than its
        # predecessor would have.
        observed = self.monotonic()
        threshold = self.config["STALE_AFTER_SECONDS"]
        watched, stale = {}, []
        for run_id, beat in runs.running_heartbeats():
            previous = self._heartbeats.get(run_id)
            since = previous[1] if previous is not None and previous[0] == beat else observed
            watched[run_id] = (beat, since)
            if observed - since >= threshold:
                stale.append((run_id, beat))
        self._heartbeats = watched
        outcomes = runs.sweep_stale(now=now or self.clock(), candidates=stale) if stale else []
        for run_id, status in outcomes:
            log.warning("sweep: run=%s had no heartbeat, now %s", run_id, status)
        return outcomes

    def requeue_lost(self, now=None):
        return recovery.requeue_lost(now or self.clock(), connection=self.redis)

    def reconcile_rq(self, now=None):
        return recovery.reconcile_registries(now or self.clock(), connection=self.redis)

    def process_webhooks(self, now=None):
        """Deliveries whose dispatch was never kicked or whose dispatcher died get their runs."""
        from webapp.webhooks.dispatch import dispatch_pending

        return dispatch_pending(now=now or self.clock())

    def check_alerts(self, now=None):
        return alerts.sync_alerts(now or self.clock())

    def cleanup(self, now=None):
        return retention.cleanup(now or self.clock())

    def drain_outbox(self, now=None):
        """SPEC §7's periodic drain. Not a fixed-id maintenance job: that one stays "started"
        in RQ for 90 s after its worker is SIGKILLed, and no drain was enqueued meanwhile."""
        return outbox.enqueue_drain(self.redis)

    def _maintenance_step(self, func_name):
        def step(now=None):
            return self.enqueue_maintenance(func_name)
        return step

    def enqueue_maintenance(self, func_name):
        """Enqueue `func_name` unless its previous job is still pending. Returns True if enqueued."""
        job_id = "maintenance-" + func_name.replace(".", "_")  # RQ ids: letters, digits, _ and -
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            job = None
        if job is not None:
            if job.get_status(refresh=False) in _PENDING_JOB_STATUSES:
                log.debug("maintenance: %s still pending, not enqueued again", func_name)
                return False
            job.delete()
        queue(DEFAULT, self.redis).enqueue_call(func_name, job_id=job_id, timeout=self.config["JOB_TIMEOUT_SECONDS"],
                                                result_ttl=600, failure_ttl=24 * 3600,
                                                description=f"maintenance {func_name}")
        log.info("maintenance: enqueued %s", func_name)
        return True

    # -- running them ----------------------------------------------------------------------

    def run_step(self, step):
        """Run one step with the app's session cleaned up afterwards. A failing step is
        logged and retried at its next turn; it never stops the loop."""
        if self._stop.is_set():
            return None
        if step.leader_only and not self.lease.held:
            return None
        try:
            return step.func(self.clock())
        except Exception:
            log.exception("step %s failed; it runs again at its next turn", step.name)
            db.session.rollback()
            return None
        finally:
            db.session.remove()

    def run_all_steps(self):
        """Every step once, in order (for `--once` and tests)."""
        return {step.name: self.run_step(step) for step in self.steps()}

    def build_schedule(self):
        scheduler = schedule_lib.Scheduler()
        for step in self.steps():
            scheduler.every(step.interval).seconds.do(self.run_step, step)
        return scheduler

    def run_forever(self):
        scheduler = self.build_schedule()
        self.run_all_steps()  # take the lease and catch up at once instead of one interval later
        tick = self.config["SUPERVISOR_TICK_SECONDS"]
        while not self._stop.is_set():
            scheduler.run_pending()
            idle = scheduler.idle_seconds
            self._stop.wait(max(0.0, min(tick, idle if idle is not None else tick)))
        self.shutdown()

    def request_stop(self):
        """Called from a signal handler: the current step finishes, then the loop ends."""
        self._stop.set()

    def shutdown(self):
        """Hand leadership over at once instead of letting the lease run out."""
        was_leading, self.leading = self.leading, False
        if self._lease is not None:
            self._lease.release()
        try:
            self._write_state(self.clock(), False)
        except Exception:
            log.exception("shutdown: could not write the final heartbeat")
            db.session.rollback()
        finally:
            db.session.remove()
        log.warning("supervisor=%s stopped%s", self.name, " and released leadership" if was_leading else "")
