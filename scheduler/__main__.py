"""`python -m scheduler`: run a supervisor (any number may run; one leads at a time)."""
import argparse
import logging
import os
import signal

from webapp import create_app

from .clock import make_clock
from .supervisor import Supervisor


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__)
    parser.add_argument("--name", default=None, help="supervisor name (default: host.pid)")
    parser.add_argument("--clock-file", default=os.environ.get("SYNCHUB_CLOCK_FILE") or None,
                        help="read 'now' from this file (tests and chaos drills; see scheduler/clock.py)")
    parser.add_argument("--once", action="store_true",
                        help="run every step once and exit (for a cron-driven setup instead of a daemon)")
    args = parser.parse_args(argv)

    app = create_app()
    with app.app_context():
        supervisor = Supervisor(app, name=args.name, clock=make_clock(args.clock_file))
        if args.once:
            supervisor.run_all_steps()
            supervisor.shutdown()
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: supervisor.request_stop())
        logging.getLogger("scheduler").warning("supervisor=%s starting", supervisor.name)
        supervisor.run_forever()


if __name__ == "__main__":
    main()
