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
        worker = Worker(args.queues.split(","), connection=redis_ext.client, name=name)
        worker.work(burst=args.burst, with_scheduler=False)


def _preload():
    """Import what jobs use before forking: every job runs in a fresh fork of this process,
    so anything imported here is paid once, not once per job."""
    import worker.delivery  # noqa: F401
    import worker.engine  # noqa: F401
    import worker.jobs  # noqa: F401
    from webapp.connectors import load_all

    load_all()


if __name__ == "__main__":
    main()
