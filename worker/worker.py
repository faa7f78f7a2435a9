"""The RQ worker that runs synchub's jobs (`python -m worker`, worker/__main__.py).

It owns what every job relies on, so the jobs themselves (worker/jobs.py) are plain
functions:
  - at start: what jobs use is imported and set up once, in this process, and a run is
    rehearsed in a transaction that is rolled back, so that the first job (and, forking,
    every work horse) finds the run's statements compiled (worker/rehearsal.py);
  - with WORKER_FORK off (the default), each job runs in this process, as RQ's SimpleWorker
    runs jobs: the pool's connections and SQLAlchemy's compiled statements serve job after job
    (a forked work horse opened a connection and started cold every time: a no-op run cost
    2.4-3.2x a bare forked RQ job, docs/PERFORMANCE.md). The app context is pushed and
    popped per job, so the session of one job never leaks into the next. What a fork gave
    for free is kept otherwise: memory a job leaves behind is bounded by a ceiling
    (WORKER_MAX_MEMORY_MB) and a job count (WORKER_MAX_JOBS), after which the worker
    finishes its job, unregisters and starts afresh in the same process (restart_in_place);
  - with WORKER_FORK on, in a work horse (a fresh fork per job): the database pool
    inherited from this process is dropped, the job runs in the app context, and the
    metrics it counted are flushed when it ends (the horse ends with os._exit: atexit
    hooks never run);
  - either way, a Redis outage outside RQ's blocking dequeue (as the worker is made and
    registers, its registry cleaning, the suspension check, the heartbeat after a job, a
    job's end) does not end the worker: it waits for Redis (RQ's own loop would quit on the
    error), and registers again if Redis came back without its registration;
  - at start: a dead predecessor registered under the same name is forgotten.
"""
import gc
import logging
import os
import resource
import socket
import sys
import time

import redis
from rq import SimpleWorker, Worker
from rq.timeouts import UnixSignalDeathPenalty

from webapp import metrics, queue
from webapp.extensions import db, redis_ext

from .rehearsal import rehearse

log = logging.getLogger(__name__)

# What redis-py raises when Redis cannot be reached (refused, reset, timed out).
REDIS_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class RunTimeLimit(UnixSignalDeathPenalty):
    """RQ's job time limit (SIGALRM in the thread that runs the job, forked or not), in words:
    the engine fails a run it stops with this message (webapp/retry_policy.py)."""

    def handle_death_penalty(self, signum, frame):
        raise self._exception(f"The job ran longer than its time limit of {self._timeout} seconds and was stopped "
                              f"(SYNCHUB_JOB_TIMEOUT_SECONDS, for runs; set it above your longest sync).")


class SynchubWorker(Worker):
    death_penalty_class = RunTimeLimit

    def __init__(self, app, queue_names=queue.PRIORITY_ORDER, name=None):
        """`queue_names`: webapp.queue's names (high, default...), highest priority first."""
        self.app = app
        with app.app_context():
            connection = redis_ext.client
            queues = [queue.queue(queue_name, connection) for queue_name in queue_names]
        name = name or f"{socket.gethostname()}.{os.getpid()}"
        # RQ's worker talks to Redis as it is made: one started beside a Redis that is still
        # starting waits for it, instead of ending.
        try:
            connection.ping()
        except REDIS_UNREACHABLE as exc:
            log.warning("Worker %s could not reach Redis (%s); it waits for Redis and starts.", name, exc)
            wait_for_redis(connection)
        super().__init__(queues, name=name, connection=connection)
        self.jobs_in_process = 0
        # Why this worker stopped taking jobs to start afresh (restart_in_place), or None.
        self.restart_reason = None

    def work(self, *args, **kwargs):
        prepare(self.app)
        return super().work(*args, **kwargs)

    def register_birth(self):
        self._forget_dead_namesake()
        super().register_birth()

    def bootstrap(self, *args, **kwargs):
        """RQ's start (register, subscribe, listen), tried again once Redis answers: a worker
        started while Redis starts or restarts waits for it instead of ending."""
        while True:
            try:
                return super().bootstrap(*args, **kwargs)
            except REDIS_UNREACHABLE as exc:
                log.warning("Worker %s could not register in Redis (%s); it waits for Redis and starts again.",
                            self.name, exc)
                if self.pubsub_thread:  # subscribed before the outage: one listener, not two
                    self.pubsub_thread.stop()
                    self.pubsub_thread.join(timeout=1)
                    self.pubsub.close()
                    self.pubsub_thread = None
                wait_for_redis(self.connection)

    def check_for_suspension(self, burst):
        self._ride_out_outage("check in Redis whether workers are suspended", super().check_for_suspension, burst)

    def run_maintenance_tasks(self):
        # Every 10 minutes and at start; a partial pass is tried again on the next loop.
        self._ride_out_outage("clean RQ's registries in Redis", super().run_maintenance_tasks)

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        # RQ's dequeue loop handles an outage here itself; the heartbeat after a job is not in it.
        return self._ride_out_outage("send its heartbeat to Redis", self._heartbeat, timeout)

    def _heartbeat(self, timeout):
        super().heartbeat(timeout)
        if not self.connection.hexists(self.key, "pid"):
            # Redis lost this worker's registration (restarted without persistence) and the
            # heartbeat just recreated the key with nothing but its time. Registered again, the
            # key names this process, so a namesake started after a SIGKILL can tell it is gone
            # (_forget_dead_namesake); and RQ lists this worker again.
            log.warning("Worker %s registers again: Redis had lost its registration.", self.name)
            self.connection.delete(self.key)
            super().register_birth()

    def execute_job(self, job, queue):
        # RQ records a job's start and end in Redis from this process when it does not fork
        # (and a forking worker records what its work horse left). The job's run is in the
        # database, which is what the supervisor sweeps and requeues (docs/RELIABILITY.md).
        return self._ride_out_outage(f"record the end of job {job.id} in Redis", self._execute_job, job, queue)

    def _execute_job(self, job, queue):
        if self.app.config["WORKER_FORK"]:
            return super().execute_job(job, queue)
        try:
            return SimpleWorker.execute_job(self, job, queue)
        finally:
            self.jobs_in_process += 1
            self._stop_if_worn()

    def _ride_out_outage(self, what, call, *args):
        """`call(*args)`, and if Redis cannot be reached meanwhile, wait for it and go on.
        RQ's work loop ends the worker on any error outside its blocking dequeue, so a Redis
        outage at the wrong moment (a job's end, the registry cleaning) would stop a worker
        that RQ's own dequeue keeps alive through the same outage."""
        try:
            return call(*args)
        except REDIS_UNREACHABLE as exc:
            log.warning("Worker %s could not %s (%s); it waits for Redis and goes on.",
                        self.name, what, exc)
            wait_for_redis(self.connection, lambda: self._stop_requested)
            return None

    def _stop_if_worn(self):
        """After a job in this process: past the job count or the memory ceiling, stop taking
        jobs (RQ's loop ends after the current job, as on SIGTERM) so that the caller starts
        afresh (restart_in_place)."""
        max_jobs, max_mb = self.app.config["WORKER_MAX_JOBS"], self.app.config["WORKER_MAX_MEMORY_MB"]
        if max_jobs and self.jobs_in_process >= max_jobs:
            self.restart_reason = f"it ran {self.jobs_in_process} jobs (SYNCHUB_WORKER_MAX_JOBS is {max_jobs})"
        elif max_mb and (resident := resident_megabytes()) > max_mb:
            self.restart_reason = (f"it holds {resident:.0f} MB of memory "
                                   f"(SYNCHUB_WORKER_MAX_MEMORY_MB is {max_mb})")
        if self.restart_reason:
            log.warning("Worker %s starts afresh after this job: %s.", self.name, self.restart_reason)
            self._stop_requested = True  # what RQ's own warm shutdown sets

    def should_restart(self):
        """Stopped because it was worn (not by a signal, not at the end of a burst)."""
        return self.restart_reason is not None and self._shutdown_requested_date is None

    def get_heartbeat_ttl(self, job, *args, **kwargs):
        if self.app.config["WORKER_FORK"]:
            return super().get_heartbeat_ttl(job, *args, **kwargs)
        return SimpleWorker.get_heartbeat_ttl(self, job, *args, **kwargs)

    def main_work_horse(self, job, queue):
        # A fork must not use the database connections pooled by its parent.
        with self.app.app_context():
            db.engine.dispose(close=False)
        super().main_work_horse(job, queue)

    def perform_job(self, job, queue, execution):
        with self.app.app_context():
            try:
                return super().perform_job(job, queue, execution)
            finally:
                # With RQ's own connection: one connect fewer per job than a client of its own.
                metrics.flush(self.connection)

    def _forget_dead_namesake(self):
        """A worker restarted under a fixed name (systemd's `--name %H.%i`) after a SIGKILL
        finds its predecessor still registered until RQ's worker TTL runs out, and RQ
        refuses to start. If that predecessor ran on this host and its process is gone,
        unregister it."""
        old = Worker.find_by_key(Worker.redis_worker_namespace_prefix + self.name, connection=self.connection)
        if old is None or old.hostname != socket.gethostname() or old.pid is None:
            return
        if old.pid == os.getpid():  # a container restarted with the same pid: that was us
            old.register_death()
            return
        try:
            os.kill(old.pid, 0)
            return  # still alive: let RQ refuse, two workers must not share a name
        except ProcessLookupError:
            pass
        except PermissionError:
            return
        old.register_death()


def wait_for_redis(connection, stop_requested=lambda: False):
    """Until Redis answers or a stop is requested, with RQ's own backoff between tries."""
    wait = 1.0
    while not stop_requested():
        try:
            connection.ping()
            return
        except REDIS_UNREACHABLE:
            time.sleep(wait)
            wait = min(wait * Worker.exponential_backoff_factor, Worker.max_connection_wait_time)


def restart_in_place():
    """Replace this process with a fresh `python -m worker` with the same arguments (and
    pid): the fork-free worker's way to shed what its jobs left behind. The same pid
    keeps any process manager content (systemd, honcho, a container), none of which has to
    restart anything; the new process registers with RQ afresh (the old registration was
    removed when the work loop ended). File descriptors do not survive: Python opens them
    non-inheritable."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606  this process's own command line, no shell


def resident_megabytes():
    """This process's resident memory now (Linux: /proc); elsewhere its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def prepare(app):
    """What a worker does once, before its first job (and what a benchmark of a job does to
    stand where a worker's job stands)."""
    _preload()
    # Every work horse inherits the statements this compiles (worker/rehearsal.py).
    rehearse(app)
    # What is alive now (modules, connectors, mappers, compiled statements) lives as long as
    # the process. Frozen, it is left out of the garbage collector's full passes, which
    # otherwise walked all of it while a job's records were being allocated: a third of a
    # worker's first 20,000-record sync (docs/PERFORMANCE.md, "The collector"). A forked
    # work horse then no longer writes to those pages either (copy-on-write).
    gc.collect()
    gc.freeze()


def _preload():
    """Import what jobs use before the first job: paid once here, not by a job (with forking,
    not by every work horse)."""
    from sqlalchemy.orm import configure_mappers

    import worker.jobs  # noqa: F401  (and through it the engine, the outbox sender...)
    from webapp.connectors import load_all

    load_all()
    # SQLAlchemy configures the ORM mappers on first use; done here, no job pays for it
    # (it was a twentieth of a webhook dispatch job's time).
    configure_mappers()
