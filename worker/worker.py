"""The RQ worker that runs synchub's jobs (`python -m worker`, worker/__main__.py).

It owns what every job relies on, so the jobs themselves (worker/jobs.py) are plain
functions:
  - before forking: what jobs use is imported and set up once, in this process, and a run
    is rehearsed in a transaction that is rolled back, so that every work horse inherits
    the run's compiled statements (worker/rehearsal.py);
  - in the work horse (each job runs in a fresh fork): the database pool inherited from
    this process is dropped, the job runs in the app context, and the metrics it counted
    are flushed when it ends (the horse ends with os._exit: atexit hooks never run);
  - or, with WORKER_FORK off, in this process, as RQ's SimpleWorker runs jobs: the pool's
    connections and SQLAlchemy's compiled statements then serve job after job, where each
    fork started cold (compiling a no-op run's statements was half of its cost,
    docs/PERFORMANCE.md). The app context is pushed and popped per job, so the session of
    one job never leaks into the next;
  - at start: a dead predecessor registered under the same name is forgotten.
"""
import os
import socket

from rq import SimpleWorker, Worker

from webapp import metrics, queue
from webapp.extensions import db, redis_ext

from .rehearsal import rehearse


class SynchubWorker(Worker):
    def __init__(self, app, queue_names=queue.PRIORITY_ORDER, name=None):
        """`queue_names`: webapp.queue's names (high, default...), highest priority first."""
        self.app = app
        with app.app_context():
            connection = redis_ext.client
            queues = [queue.queue(queue_name, connection) for queue_name in queue_names]
        super().__init__(queues, name=name or f"{socket.gethostname()}.{os.getpid()}", connection=connection)

    def work(self, *args, **kwargs):
        _preload()
        # Every work horse inherits the statements this compiles (worker/rehearsal.py).
        rehearse(self.app)
        return super().work(*args, **kwargs)

    def register_birth(self):
        self._forget_dead_namesake()
        super().register_birth()

    def execute_job(self, job, queue):
        if self.app.config["WORKER_FORK"]:
            return super().execute_job(job, queue)
        return SimpleWorker.execute_job(self, job, queue)

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


def _preload():
    """Import what jobs use before forking: every job runs in a fresh fork of this process,
    so anything imported here is paid once, not once per job."""
    from sqlalchemy.orm import configure_mappers

    import worker.jobs  # noqa: F401  (and through it the engine, the outbox sender...)
    from webapp.connectors import load_all

    load_all()
    # SQLAlchemy configures the ORM mappers on first use; done here, no job pays for it
    # (it was a twentieth of a webhook dispatch job's time).
    configure_mappers()
