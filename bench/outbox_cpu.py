"""CPU per outbox delivery in this process: a drain (worker.outbox_sender.drain, in-process)
next to the bare `requests` loop of bench.outbox_delivery, same events, same simulator.

    .venv/bin/python -m bench.outbox_cpu [--backend sqlite|postgresql] [--events 500] [--rounds 3]
                                         [--profile cumulative|tottime]

On a shared machine the rates of bench.outbox_delivery swing with the load; the process's
CPU time per event (time.process_time) barely does, so it is the figure to compare two
versions of the sending path with (the wall-clock rates are printed too, the drain's with
its sending threads in this process). --profile prints a cProfile of the last round's drain
(wall time per function; `--profile-cpu` times it in CPU instead).
"""
import argparse
import cProfile
import pstats
import tempfile
import time

from bench.common import Simulator
from bench.outbox_delivery import Bench, bare_loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=("cumulative", "tottime"), default=None)
    parser.add_argument("--profile-cpu", action="store_true", help="profile with this process's CPU time as the clock")
    args = parser.parse_args()

    from tests.support import RedisServer

    redis_server = RedisServer().start()
    simulator = Simulator("loops", "--rate-limit", "none")
    bench = Bench(args.backend, redis_server.url, tempfile.mkdtemp(prefix="bench-outbox-cpu-"))
    profile = cProfile.Profile(time.process_time) if args.profile_cpu else cProfile.Profile()
    try:
        for number in range(args.rounds):
            started = time.process_time()
            bare_rate = bare_loop(simulator.url, args.events)
            bare_cpu = (time.process_time() - started) / args.events * 1000
            bench.prepare(simulator.url, args.events, rate_limit=[1_000_000, 1])
            with bench.app.app_context():
                from webapp.extensions import redis_ext
                from worker.outbox_sender import drain

                profiling = args.profile and number == args.rounds - 1
                started, wall = time.process_time(), time.perf_counter()
                if profiling:
                    profile.enable()
                result = drain(redis_client=redis_ext.client, worker_name="bench", budget_seconds=600)
                profile.disable()
                drain_cpu = (time.process_time() - started) / args.events * 1000
                drain_rate = args.events / (time.perf_counter() - wall)
            assert result.done == args.events, result
            print(f"{args.backend} round {number + 1}: CPU ms per event: bare loop {bare_cpu:.2f}, "
                  f"drain {drain_cpu:.2f}{' (profiled)' if profiling else ''}; events/s: bare loop "
                  f"{bare_rate:,.0f}, drain {drain_rate:,.0f} ({drain_rate / bare_rate:.2f}x)", flush=True)
        if args.profile:
            pstats.Stats(profile).sort_stats(args.profile).print_stats(40)
    finally:
        bench.close()
        simulator.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
