"""Where a full sync's time goes, phase by phase: the benchmark's engine child
(bench/sync_throughput.py) run in this process with wall-clock timers around the engine's
phases, main thread and fetch thread. A profile, not a ratio: docs/PERFORMANCE.md cites it.

    .venv/bin/python -m bench.engine_phases [--records 20000] [--backend sqlite] [--runs 3]
"""
import argparse
import collections
import functools
import os
import tempfile
import time

from bench.common import Simulator, ThrowawayDatabase

# (owner's import path, attribute, label); "F " marks the fetch thread's phases.
PHASES = [
    ("worker.store", "write_page", "page write"),
    ("worker.engine:RunExecution", "_commit_page", "checkpoint and commit"),
    ("webapp.runs", "record_page", "  of which the checkpoint UPDATE"),
    ("worker.engine:RunExecution", "_publish", "progress to Redis"),
    ("worker.engine:PageFetcher", "result", "waiting for a page"),
    ("worker.engine:RunExecution", "_complete", "the end"),
    ("worker.store", "soft_delete_unseen", "  of which the sweep for unseen records"),
    ("webapp.runs", "finish", "  of which finishing the run"),
    ("worker.engine:PageFetcher", "_read", "F a page read and prepared"),
    ("worker.engine:RunExecution", "_sort", "F   keys and validation"),
    ("worker.engine:RunExecution", "_prepare", "F   canonical JSON and hashes (with the above)"),
]


def _owner(path):
    import importlib

    module, _, cls = path.partition(":")
    owner = importlib.import_module(module)
    return getattr(owner, cls) if cls else owner


def _timed(totals, owner, name, label):
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - started
    setattr(owner, name, wrapper)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from tests.support import RedisServer

    redis_server = RedisServer().start()
    sim = Simulator("records", "--records", str(args.records), "--page-size-max", "1000")
    os.environ["BENCH_REDIS_URL"] = redis_server.url
    os.environ["SYNCHUB_INSTANCE_PATH"] = tempfile.mkdtemp(prefix="bench-instance-")
    from bench import sync_throughput
    from worker import engine

    totals = collections.Counter()
    for path, name, label in PHASES:
        _timed(totals, _owner(path), name, label)
    # The child's first execute_run is the no-op job before the sync: count the sync's alone.
    original_run = engine.execute_run

    def execute_run(*a, **k):
        totals.clear()
        started = time.perf_counter()
        try:
            return original_run(*a, **k)
        finally:
            totals["the run"] += time.perf_counter() - started
    engine.execute_run = execute_run
    rows = collections.defaultdict(list)
    try:
        for _ in range(args.runs):
            database = ThrowawayDatabase(args.backend, tempfile.mkdtemp())
            try:
                sync_throughput._migrate(database.url)
                sync_throughput.child_engine(database.url, args.backend, sim.url, 1000)
            finally:
                database.drop()
            for label in ["the run"] + [label for _, _, label in PHASES]:
                rows[label].append(totals[label] * 1000)
    finally:
        sim.stop()
        redis_server.stop()
    print(f"{args.records} records, {args.backend}, pages of 1,000, {args.runs} runs (ms; F: fetch thread)")
    for label, values in rows.items():
        print(f"{label:<50}{min(values):>8.1f} -{max(values):>7.1f}")


if __name__ == "__main__":
    main()
