"""python -m tests.chaos [--trials N] [--seed S] [--scenarios a,b]: the long chaos run.

Needs SYNCHUB_TEST_POSTGRES_URL (a PostgreSQL server it may create a database on). Prints
one line per trial (with its seed, to replay it) and the table for docs/RELIABILITY.md;
exits 1 when any invariant was violated."""
import argparse
import random
import signal
import sys

from .runner import run, table
from .scenarios import SCENARIOS


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a fresh seed, printed)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated; default all")
    args = parser.parse_args(argv)
    # `kill <pid>` stops the run like Ctrl-C: the stacks' processes, clusters and network hosts are
    # cleaned up on the way out (a run started in the background ignores SIGINT).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"chaos run: seed {seed}, {args.trials} trials", flush=True)
    results = run(args.scenarios.split(","), args.trials, seed, log=lambda line: print(line, flush=True))
    print(table(results, seed))
    return 1 if any(r["violations"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
