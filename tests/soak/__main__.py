"""python -m tests.soak [--minutes N | --duration 60m] [--seed S] [--output DIR]: the soak.

Needs SYNCHUB_TEST_POSTGRES_URL, like `make chaos`. Prints a line per fault and per minute,
then the report for docs/RELIABILITY.md (also written to DIR/soak.md, the samples to
DIR/soak.json); exits 1 when an invariant was violated or a process's use grew beyond its
bound."""
import argparse
import os
import random
import re
import sys
import time

from .run import all_violations, report, run_soak


def duration(text):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|h|)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError("a duration like 60m, 90s, 1h or a number of minutes")
    value, unit = float(match.group(1)), match.group(2) or "m"
    return value * {"s": 1, "m": 60, "h": 3600}[unit]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--duration", type=duration, default=None, help="e.g. 60m, 1h, 180s")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--output", default=None, help="default: test-output/soak-<time>")
    args = parser.parse_args(argv)
    if not os.environ.get("SYNCHUB_TEST_POSTGRES_URL"):
        parser.error("SYNCHUB_TEST_POSTGRES_URL is unset: the soak runs against PostgreSQL, like make chaos "
                     "(e.g. postgresql://postgres@127.0.0.1:5432/test)")
    seconds = args.duration if args.duration is not None else (args.minutes if args.minutes is not None else 60) * 60
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    output = args.output or os.path.join("test-output", time.strftime("soak-%Y%m%d-%H%M%S"))
    result = run_soak(seconds, seed, log=lambda line: print(line, flush=True), output_dir=output)
    print(report(result))
    print(f"written to {output}/soak.md and soak.json")
    return 1 if all_violations(result) or result["growth"] else 0


if __name__ == "__main__":
    sys.exit(main())
