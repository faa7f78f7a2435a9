"""`python -m worker`: an RQ worker for synchub's queues, in the app context."""
import argparse
import os
import socket

from rq import Worker

from webapp import create_app
from webapp.extensions import db, redis_ext
from webapp.queue import PRIORITY_ORDER


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--queues", default=",".join(PRIORITY_ORDER), help="comma-separated, highest priority first")
    parser.add_argument("--name", default=None, help="worker name (default: host.pid)")
    args = parser.parse_args(argv)

    app = create_app()
    _preload()
    with app.app_context():
        # The work horse is a fork: it must not share the parent's pooled DB sockets.
        engine = db.engine
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
        name = args.name or f"{socket.gethostname()}.{os.getpid()}"
        _forget_dead_namesake(name)
        worker = Worker(args.queues.split(","), connection=redis_ext.client, name=name)
        worker.work(burst=args.burst, with_scheduler=False)


def _forget_dead_namesake(name):
    """A worker restarted under a fixed name (systemd's `--name %H.%i`) after a SIGKILL finds
    its predecessor still registered until RQ's worker TTL runs out, and RQ refuses to start.
    If that predecessor ran on this host and its process is gone, unregister it."""
    key = Worker.redis_worker_namespace_prefix + name
    old = Worker.find_by_key(key, connection=redis_ext.client)
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
    import worker.outbox_sender  # noqa: F401
    import worker.engine  # noqa: F401
    import worker.jobs  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    from webapp.connectors import load_all

    load_all()
    # SQLAlchemy configures the ORM mappers on first use; done here, no job pays for it
    # (it was a twentieth of a webhook dispatch job's time).
    configure_mappers()


if __name__ == "__main__":
    main()
