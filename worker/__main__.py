"""`python -m worker`: an RQ worker for synchub's queues (worker/worker.py)."""
import argparse

from webapp import create_app
from webapp.queue import PRIORITY_ORDER

from .worker import SynchubWorker, restart_in_place


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--queues", default=",".join(PRIORITY_ORDER), help="comma-separated, highest priority first")
    parser.add_argument("--name", default=None, help="worker name (default: host.pid)")
    args = parser.parse_args(argv)

    worker = SynchubWorker(create_app(), args.queues.split(","), name=args.name)
    worker.work(burst=args.burst, with_scheduler=False)
    if worker.should_restart():
        # Past its memory ceiling or job count (worker/worker.py): the same command afresh.
        restart_in_place()


if __name__ == "__main__":
    main()
