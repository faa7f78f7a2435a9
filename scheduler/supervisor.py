"""The supervisor loop: the periodic jobs (webapp/periodic.py), each run on its cadence by
the `schedule` library, the leader-only ones only while this supervisor holds the lease.

Every step takes `now` from the injected clock (business time: slots, heartbeats, alert
windows); the cadence and the leader lease use real time. Tests call the steps directly
with any `now`, so they never sleep through an hour.

Two steps are this supervisor's own versions of jobs of the list, because they need its
state:
    tick    every SUPERVISOR_TICK_SECONDS, every supervisor: renew/take the lease; if
            leading, plan and fire due schedules; write the heartbeat (Redis key +
            `supervisors` row)
    sweep   leader: running runs whose heartbeat this supervisor has seen unchanged for
            STALE_AFTER_SECONDS -> requeued or failed
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
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from webapp import periodic, redis_keys, runs
from webapp.schedules import firing
from webapp.extensions import db, redis_ext
from webapp.models import SupervisorState

from .clock import system_clock
from .leader import Lease

log = logging.getLogger("scheduler")



def heartbeat_key(name, prefix=None):
    """A supervisor's heartbeat in Redis: "<prefix>:supervisors:heartbeat:<name>"."""
    return redis_keys.key("supervisors", "heartbeat", name, prefix_=prefix)


@dataclass(frozen=True)
class Step:
    name: str
    interval: float  # seconds of real time between runs
    func: Callable[[datetime], object]
    leader_only: bool = True


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
        self._stop = threading.Event()
        self._lease = None
        self._last_tick = None  # self.monotonic() when the last tick began

    @property
    def redis(self):
        return redis_ext.client

    @property
    def lease(self):
        if self._lease is None:
            self._lease = Lease(self.redis, self.name, self.config["LEADER_TTL_SECONDS"], monotonic=self.monotonic)
        return self._lease

    # -- the steps -------------------------------------------------------------------------

    def steps(self):
        own = {"tick": self.tick, "sweep": self.sweep}
        return [Step(job.name, seconds, own.get(job.name, job.run), job.leader_only)
                for job, seconds in periodic.scheduled(self.config)]

    def tick(self, now=None):
        """One beat: leadership, due schedules (when leading), heartbeat. The heartbeat is
        written last, so a row's last_tick_at=T says this tick's work for time T is done."""
        self._last_tick = self.monotonic()
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
            elif o.action == "follow_up":
                log.info("schedule: connection=%s slot=%s met an active sync: run=%s waits to follow it (buffer_one)",
                         o.connection, slot, o.run_id)
            elif o.action == "skipped_active":
                log.info("schedule: skipped connection=%s slot=%s: run=%s is still active", o.connection, slot, o.run_id)
            elif o.action == "refused":
                log.warning("schedule: refused connection=%s slot=%s: %s", o.connection, slot, o.reason)
            else:
                log.debug("schedule: slot connection=%s slot=%s taken by another supervisor", o.connection, slot)
        return outcomes

    def heartbeat(self, now):
        try:
            self.redis.set(heartbeat_key(self.name),
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

    # -- running them ----------------------------------------------------------------------

    def run_step(self, step):
        """Run one step with the app's session cleaned up afterwards. A failing step is
        logged and retried at its next turn; it never stops the loop.

        Firing comes first and one slow step must not cost the lease (docs/SUPERVISOR.md):
        the lease is renewed before every leader-only step, not only in the tick, and a
        tick that fell due while a step ran runs right after it, before the next step."""
        result = self._run_step(step)
        if step.name != "tick" and self._tick_overdue():
            self._run_step(Step("tick", self.config["SUPERVISOR_TICK_SECONDS"], self.tick, leader_only=False))
        return result

    def _tick_overdue(self):
        return self._last_tick is not None and \
            self.monotonic() - self._last_tick >= float(self.config["SUPERVISOR_TICK_SECONDS"])

    def _run_step(self, step):
        if self._stop.is_set():
            return None
        if step.leader_only and self.leading:
            self.lead()  # renew: the steps before this one may have taken a good part of the TTL
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
