"""Memory of a worker that runs jobs in its own process (the default, SYNCHUB_WORKER_FORK=0):
its resident set sampled while it executes N sync runs one after another.

    .venv/bin/python -m bench.worker_memory [--runs 500] [--records 200] [--backend sqlite|postgresql]

A real `python -m worker` with no memory ceiling (SYNCHUB_WORKER_MAX_MEMORY_MB=0, so nothing
restarts it), a throwaway database and a private redis-server. Each run is a full sync of
its own sandbox connection (`--records` records in pages of 50), so every run writes. The
worker's RSS (VmRSS from /proc) is printed after the first run and every tenth of the way:
memory that runs leave behind shows as a slope (docs/PERFORMANCE.md, "Cheap runs").
"""
import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, ThrowawayDatabase


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--backend", default="sqlite")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # one line per queued run otherwise

    from tests.support import RedisServer

    redis_server = RedisServer().start()
    instance = tempfile.mkdtemp(prefix="bench-worker-memory-")
    database = ThrowawayDatabase(args.backend, instance)
    env = dict(os.environ, DATABASE_URL=database.url, REDIS_URL=redis_server.url, SYNCHUB_INSTANCE_PATH=instance,
               SYNCHUB_LOG_LEVEL="WARNING", PYTHONPATH=ROOT, SYNCHUB_WORKER_FORK="0", SYNCHUB_WORKER_MAX_MEMORY_MB="0",
               SYNCHUB_WORKER_MAX_JOBS="0")
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "SYNCHUB_INSTANCE_PATH")})
    worker = None
    try:
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        from sqlalchemy import func, select

        from webapp import create_app, runs
        from webapp.extensions import db
        from webapp.models import Connection, Run

        app = create_app()
        with app.app_context():
            conns = [Connection(name=f"c{i}", connector="sandbox",
                                settings={"records": args.records, "page_size": 50}) for i in range(args.runs)]
            db.session.add_all(conns)
            db.session.commit()
            for conn in conns:
                runs.trigger(conn, trigger="api")
            worker = subprocess.Popen([sys.executable, "-m", "worker", "--name", "bench-memory"], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            marks = sorted({1} | {args.runs * k // 10 for k in range(1, 11)})
            print(f"{args.backend}, {args.runs} runs of {args.records} records, one worker without fork\n")
            print(f"{'runs done':>10}{'worker RSS MB':>15}{'seconds':>9}")
            started = time.monotonic()
            for mark in marks:
                while True:
                    db.session.rollback()  # a fresh snapshot each poll
                    done = db.session.scalar(select(func.count()).select_from(Run).where(Run.status == "completed"))
                    if done >= mark:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError("the worker exited")
                    time.sleep(0.01)
                print(f"{done:>10}{rss_mb(worker.pid):>15.1f}{time.monotonic() - started:>9.1f}", flush=True)
            db.session.remove()
            db.engine.dispose()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait()
        database.drop()
        redis_server.stop()


if __name__ == "__main__":
    main()
