"""Capacity: how runs/s and records/s grow with worker processes, and what synchub's
bookkeeping costs per run compared with a bare RQ job that does nothing.

    .venv/bin/python -m bench.capacity [--runs 200] [--records 2000] [--workers 1,2,4] [--modes fork,inline]

Everything runs against PostgreSQL (SYNCHUB_BENCH_POSTGRES_URL, default the local one) and
a private redis-server, with real `python -m worker` processes. The workers are started
and registered first; timing starts when the jobs are enqueued and ends when the last
one has finished, so process start-up is not counted.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, ThrowawayDatabase


def noop():
    """The bare RQ job: the baseline for per-run overhead."""


def _env(db_url, redis_url, instance):
    return dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, SYNCHUB_INSTANCE_PATH=instance,
                SYNCHUB_LOG_LEVEL="WARNING", PYTHONPATH=ROOT)


class Workers:
    def __init__(self, count, env, redis_client):
        from rq import Worker

        self.procs = [subprocess.Popen([sys.executable, "-m", "worker", "--name", f"bench-{i}"], cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(count)]
        deadline = time.monotonic() + 120
        while len(Worker.all(connection=redis_client)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not register")
            time.sleep(0.1)

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait()


def _timed(start_jobs, done, poll=0.02):
    started = time.perf_counter()
    start_jobs()
    while not done():
        time.sleep(poll)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--records", type=int, default=2000, help="records per run in the scaling test")
    parser.add_argument("--scaling-runs", type=int, default=16)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--modes", default="fork,inline", help="per-run cost with forked work horses, without, or both")
    args = parser.parse_args()

    from tests.support import RedisServer

    redis_server = RedisServer().start()
    instance = tempfile.mkdtemp(prefix="bench-capacity-")
    database = ThrowawayDatabase("postgresql", instance)
    env = _env(database.url, redis_server.url, instance)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "SYNCHUB_INSTANCE_PATH")})
    try:
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        from rq import Queue
        from sqlalchemy import func, select, text

        from webapp import create_app, runs
        from webapp.extensions import db, redis_ext
        from webapp.models import Connection, Run
        from webapp.queue import queue_name

        app = create_app()
        with app.app_context():
            def reset():
                for table in ("run_events", "records", "stream_states", "runs", "connections"):
                    db.session.execute(text(f"DELETE FROM {table}"))
                db.session.commit()
                redis_ext.client.flushdb()

            def make_runs(count, records, enqueue=True):
                reset()
                conns = [Connection(name=f"c{i}", connector="sandbox", settings={"records": records, "page_size": 500})
                         for i in range(count)]
                db.session.add_all(conns)
                db.session.commit()
                for conn in conns:
                    runs.trigger(conn, trigger="api", enqueue=enqueue)

            def completed():
                db.session.rollback()  # a fresh snapshot each poll
                return db.session.scalar(select(func.count()).select_from(Run).where(Run.status == "completed"))

            def finished_jobs(queue):
                from rq.registry import FinishedJobRegistry

                return lambda: FinishedJobRegistry(queue=queue).count

            # 1. per-run overhead: a no-op sync run (zero records) against a bare RQ job, with
            #    each job in a forked work horse (WORKER_FORK=true, RQ's default) and
            #    without (WORKER_FORK=false, synchub's default: worker/worker.py); and the fork-free run against a
            #    bare job in RQ's default (forking) worker.
            bare_forked = None
            for mode in args.modes.split(","):
                reset()
                workers = Workers(1, dict(env, SYNCHUB_WORKER_FORK="1" if mode == "fork" else "0"),
                                  redis_ext.client)
                try:
                    queue = Queue(queue_name("default"), connection=redis_ext.client)
                    finished = finished_jobs(queue)
                    bare = _timed(lambda: [queue.enqueue_call("bench.capacity.noop") for _ in range(args.runs)],
                                  lambda: finished() >= args.runs)
                    make_runs(args.runs, 0, enqueue=False)
                    sync = _timed(lambda: [runs.enqueue_run(run) for run in db.session.scalars(select(Run))],
                                  lambda: completed() >= args.runs)
                finally:
                    workers.stop()
                label = ("forked work horse, SYNCHUB_WORKER_FORK=1" if mode == "fork"
                         else "no fork, the default SYNCHUB_WORKER_FORK=0")
                print(f"per-run cost, 1 worker ({label}), {args.runs} jobs: bare RQ job {1000 * bare / args.runs:.1f} ms, "
                      f"no-op sync run {1000 * sync / args.runs:.1f} ms, ratio {sync / bare:.2f}")
                if mode == "fork":
                    bare_forked = bare
                elif bare_forked is not None:
                    print(f"no-op sync run without fork vs bare RQ job in RQ's default forking "
                          f"worker: {1000 * sync / args.runs:.1f} ms vs {1000 * bare_forked / args.runs:.1f} ms, "
                          f"ratio {sync / bare_forked:.2f} (target <= 1.50)")

            # 2. scaling with worker processes
            print(f"\n{'workers':>7}{'runs/s':>9}{'records/s':>11}{'vs 1 worker':>13}")
            base = None
            for count in (int(w) for w in args.workers.split(",")):
                make_runs(args.scaling_runs, args.records, enqueue=False)
                workers = Workers(count, env, redis_ext.client)
                try:
                    seconds = _timed(lambda: [runs.enqueue_run(run) for run in db.session.scalars(select(Run))],
                                     lambda: completed() >= args.scaling_runs)
                finally:
                    workers.stop()
                rate = args.scaling_runs * args.records / seconds
                base = base or rate
                print(f"{count:>7}{args.scaling_runs / seconds:>9.2f}{rate:>11,.0f}{rate / base:>13.2f}")
            db.session.remove()
            db.engine.dispose()
    finally:
        database.drop()
        redis_server.stop()


if __name__ == "__main__":
    main()
