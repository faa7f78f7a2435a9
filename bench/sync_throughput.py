"""Full sync of N records from a local HTTP simulator into the database: the engine next
to a bare baseline measured in the same run.

    .venv/bin/python -m bench.sync_throughput [--records 100000] [--page-size 1000]
                                               [--backends sqlite,postgresql] [--rounds 3]

Baseline: the same pages fetched with a bare `requests` loop and written with a bare
batched DBAPI `executemany` upsert (one commit per page), into a table of the same shape.
Engine: a `rest` connection synced by worker.engine.execute_run (checkpoint, change
detection by content hash, progress to Redis, heartbeat), in a process prepared as the
worker is (worker.worker.prepare: imports, rehearsal, heap frozen); with `SYNCHUB_WORKER_FORK=0` after a no-op run, as the
worker's previous job (the default, forking: a work horse's cold start). Every measurement runs in a
fresh child process, so the peak RSS it reports is its own (interpreter and imports
included): with memory bounded by the page size, the engine's peak must not grow with N
(compare the N/5 rows).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, Simulator, ThrowawayDatabase, max_rss_mb

BASELINE_DDL = {
    "sqlite": """CREATE TABLE IF NOT EXISTS bench_records (id INTEGER PRIMARY KEY, connection_id INTEGER NOT NULL,
                 stream VARCHAR(100) NOT NULL, external_id VARCHAR(255) NOT NULL, data JSON NOT NULL,
                 UNIQUE (connection_id, stream, external_id))""",
    "postgresql": """CREATE TABLE IF NOT EXISTS bench_records (id SERIAL PRIMARY KEY, connection_id INTEGER NOT NULL,
                     stream VARCHAR(100) NOT NULL, external_id VARCHAR(255) NOT NULL, data JSON NOT NULL,
                     UNIQUE (connection_id, stream, external_id))""",
}
UPSERT = {
    "sqlite": "INSERT INTO bench_records (connection_id, stream, external_id, data) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (connection_id, stream, external_id) DO UPDATE SET data = excluded.data",
    "postgresql": "INSERT INTO bench_records (connection_id, stream, external_id, data) VALUES (%s, %s, %s, %s) "
                  "ON CONFLICT (connection_id, stream, external_id) DO UPDATE SET data = excluded.data",
}


def child_baseline(db_url, backend, sim_url, page_size):
    import requests

    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(db_url[len("sqlite:///"):])
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    else:
        import psycopg

        conn = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute(BASELINE_DDL[backend])
    conn.execute("DELETE FROM bench_records")
    conn.commit()
    session = requests.Session()
    started = time.perf_counter()
    count, page = 0, 1
    while True:
        body = session.get(f"{sim_url}/items", params={"page": page, "page_size": page_size}, timeout=30).json()
        rows = [(1, "items", str(r["id"]), json.dumps(r)) for r in body["items"]]
        cur = conn.cursor()
        cur.executemany(UPSERT[backend], rows)
        conn.commit()
        count += len(rows)
        if not body["has_more"]:
            break
        page += 1
    elapsed = time.perf_counter() - started
    return {"records": count, "seconds": elapsed, "peak_rss_mb": max_rss_mb()}


def child_engine(db_url, backend, sim_url, page_size):
    os.environ.setdefault("SYNCHUB_INSTANCE_PATH", tempfile.mkdtemp(prefix="bench-instance-"))
    from sqlalchemy import text

    from webapp import create_app, runs
    from webapp.extensions import db, redis_ext
    from webapp.models import Connection, Run
    from worker.engine import execute_run
    from worker.worker import prepare

    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url, "REDIS_URL": os.environ.get("BENCH_REDIS_URL")})
    # What a worker does once before its first job (imports, connectors, ORM mappers, the
    # rehearsal of a run, the heap frozen): a worker's job never pays for it, so neither
    # does this measurement.
    prepare(app)
    client = None
    with app.app_context():
        if os.environ.get("BENCH_REDIS_URL"):
            client = redis_ext.client
        if not app.config["WORKER_FORK"]:
            # Without fork a worker runs jobs in its own process (worker/worker.py): a run
            # follows the worker's previous job, whose database and Redis connections are
            # still pooled. One no-op run first, as that previous job.
            before = Connection(name="previous-job", connector="sandbox", settings={"records": 0})
            db.session.add(before)
            db.session.commit()
            execute_run(runs.trigger(before, trigger="cli", enqueue=False).run.id, redis_client=client,
                        worker_name="bench")
        for table in ("run_events", "records", "stream_states", "runs", "run_rollups", "connections"):
            db.session.execute(text(f"DELETE FROM {table}"))
        conn = Connection(name="bench", connector="rest", settings={
            "base_url": sim_url,
            # total_key: the listing says how many there are, as the bare loop's has_more does;
            # without it the engine reads one empty page past the end.
            "streams": {"items": {"path": "/items", "records_key": "items", "cursor_field": "updated_at",
                                  "total_key": "total", "pagination": {"type": "page", "page_size": page_size}}}})
        db.session.add(conn)
        db.session.commit()
        run_id = runs.trigger(conn, trigger="cli", enqueue=False).run.id
        started = time.perf_counter()
        status = execute_run(run_id, redis_client=client, worker_name="bench")
        elapsed = time.perf_counter() - started
        run = db.session.get(Run, run_id)
        assert status == "completed", (status, run.error_message)
        return {"records": run.created, "seconds": elapsed, "peak_rss_mb": max_rss_mb()}


def measure(kind, db_url, backend, sim_url, page_size):
    out = subprocess.run([sys.executable, "-m", "bench.sync_throughput", "--child", kind, db_url, backend, sim_url,
                          str(page_size)], cwd=ROOT, capture_output=True, text=True, env=os.environ.copy())
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=5)
    args = parser.parse_args()
    if args.child:
        kind, db_url, backend, sim_url, page_size = args.child
        fn = child_baseline if kind == "baseline" else child_engine
        print(json.dumps(fn(db_url, backend, sim_url, int(page_size))))
        return

    from tests.support import RedisServer

    redis_server = RedisServer().start()
    os.environ["BENCH_REDIS_URL"] = redis_server.url
    workdir = tempfile.mkdtemp(prefix="synchub-bench-")
    print(f"full sync of {args.records} records, pages of {args.page_size}, best of {args.rounds} rounds\n")
    print(f"{'backend':<11}{'records':>9}{'baseline rec/s':>16}{'engine rec/s':>14}{'ratio':>8}"
          f"{'baseline peak MB':>18}{'engine peak MB':>16}")
    try:
        for n in (args.records, args.records // 5):
            sim = Simulator("records", "--records", str(n), "--page-size-max", str(args.page_size))
            try:
                for backend in args.backends.split(","):
                    database = ThrowawayDatabase(backend, workdir)
                    try:
                        _migrate(database.url)
                        best = {"baseline": None, "engine": None}
                        for _ in range(args.rounds):
                            for kind in ("baseline", "engine"):  # interleaved: noise hits both alike
                                result = measure(kind, database.url, backend, sim.url, args.page_size)
                                assert result["records"] == n, result
                                if best[kind] is None or result["seconds"] < best[kind]["seconds"]:
                                    best[kind] = result
                        b, e = best["baseline"], best["engine"]
                        print(f"{backend:<11}{n:>9}{n / b['seconds']:>16,.0f}{n / e['seconds']:>14,.0f}"
                              f"{b['seconds'] / e['seconds']:>8.2f}{b['peak_rss_mb']:>18.1f}{e['peak_rss_mb']:>16.1f}",
                              flush=True)
                    finally:
                        database.drop()
            finally:
                sim.stop()
    finally:
        redis_server.stop()


def _migrate(db_url):
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT,
                         env=dict(os.environ, DATABASE_URL=db_url, SYNCHUB_INSTANCE_PATH=tempfile.mkdtemp()),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)


if __name__ == "__main__":
    main()
