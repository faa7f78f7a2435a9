"""CPU of a no-op run in a forked work horse: what a run costs the worker beyond the fork.

    .venv/bin/python -m bench.fork_cpu [--runs 15] [--backends sqlite,postgresql] [--cold]

Like `python -m worker` before its first job: preload, then the rehearsal
(worker/rehearsal.py; `--cold` skips it); then for each of N queued no-op sandbox runs a
child is forked that drops the pool and executes the run, as RQ's work horse does (no
Redis). Prints the median and range of the children's CPU (from wait4) and the statements
of a run. CPU, not wall: on a loaded machine it moves far less than the time per run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench.common import ROOT, ThrowawayDatabase


def measure(db_url, runs_count, cold):
    import logging

    from sqlalchemy import event

    from webapp import create_app, runs
    from webapp.extensions import db
    from webapp.models import Connection
    from worker.rehearsal import rehearse
    from worker.worker import _preload

    logging.disable(logging.WARNING)
    _preload()
    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url})
    with app.app_context():
        ids = []
        for i in range(runs_count):
            conn = Connection(name=f"c{i}", connector="sandbox", settings={"records": 0})
            db.session.add(conn)
            db.session.commit()
            ids.append(runs.trigger(conn, trigger="api", enqueue=False).run.id)
        db.session.remove()
        if not cold and not rehearse(app):
            raise RuntimeError("the rehearsal failed")
        db.engine.dispose()
        cpu, statements = [], []
        for run_id in ids:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(read)
                    db.engine.dispose(close=False)
                    count = [0]
                    event.listen(db.engine, "after_cursor_execute", lambda *a: count.__setitem__(0, count[0] + 1))
                    from worker.engine import execute_run

                    status = execute_run(run_id, redis_client=None, worker_name="bench")
                    os.write(write, json.dumps([status, count[0]]).encode())
                finally:
                    os._exit(0)
            os.close(write)
            data = os.read(read, 1000)
            os.close(read)
            usage = os.wait4(pid, 0)[2]
            status, count = json.loads(data)
            assert status == "completed", status
            cpu.append(1000 * (usage.ru_utime + usage.ru_stime))
            statements.append(count)
    return cpu, statements


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--cold", action="store_true", help="no rehearsal before forking")
    parser.add_argument("--child", nargs=2, metavar=("DB_URL", "RUNS"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.cold)))
        return
    workdir = tempfile.mkdtemp(prefix="bench-fork-cpu-")
    for backend in args.backends.split(","):
        database = ThrowawayDatabase(backend, workdir)
        try:
            env = dict(os.environ, DATABASE_URL=database.url, SYNCHUB_INSTANCE_PATH=workdir, PYTHONPATH=ROOT)
            subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                           check=True, capture_output=True)
            out = subprocess.run([sys.executable, "-m", "bench.fork_cpu", "--child", database.url, str(args.runs)]
                                 + (["--cold"] if args.cold else []), cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True)
            cpu, statements = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{backend}: no-op run in a forked child ({'cold' if args.cold else 'rehearsed'}), {args.runs} runs: "
                  f"CPU median {statistics.median(cpu):.1f} ms (range {min(cpu):.1f}-{max(cpu):.1f}), "
                  f"statements {statistics.median(statements):.0f}", flush=True)
        finally:
            database.drop()


if __name__ == "__main__":
    main()
