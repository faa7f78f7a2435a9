"""Many connections due in the same minute, two real supervisors: is every slot fired within
60 s, exactly once, and how late (issue 20, item 6)?

    .venv/bin/python -m bench.supervisor_scale [--connections 10000] [--backends sqlite,postgresql]

N connections with `hourly:0` schedules, all due at the same instant D. Two
`python -m scheduler` processes run with a clock file (scheduler/clock.py) that stands
before D; once both are ticking, the file is set to D, and the time of that write is the
start. A slot's lag is its run's `created_at` (real time) minus the start; the supervisors
tick every SUPERVISOR_TICK_SECONDS (default 5 s), which is part of the lag, as in
production. Exactly once: every connection has one scheduled run, none has two.
With --baseline, also a bare loop of `runs.trigger(trigger="schedule")` over the same
connections first (what firing them costs without the supervisor), as a time for all N;
off by default, since the target is absolute (60 s) and the loop takes minutes at 10,000.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta

from bench.common import ROOT, ThrowawayDatabase

DUE = datetime(2030, 1, 1, 10, 0)


def _migrate(url, instance):
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, check=True,
                   capture_output=True, env=dict(os.environ, DATABASE_URL=url, SYNCHUB_INSTANCE_PATH=instance))


def _pick(values, p):
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def measure(app, n, workdir, timeout, with_baseline, firing_only=False):
    from sqlalchemy import delete, func, insert, select, update

    from tests.scheduler.conftest import SupervisorProcess
    from webapp import runs
    from webapp.extensions import db, redis_ext
    from webapp.models import Alert, Connection, Run

    # The bench's own Redis server: the previous backend's supervisors were SIGKILLed and
    # their leader lease would hold this run's supervisors back for up to its TTL (30 s).
    redis_ext.client.flushdb()
    db.session.execute(insert(Connection), [
        {"name": f"scale-{i}", "connector": "sandbox", "settings": {}, "schedule": "hourly:0", "next_run_at": DUE}
        for i in range(n)])
    db.session.commit()

    baseline = None
    if with_baseline:  # the same N triggers in a bare loop, then removed again
        ids = db.session.scalars(select(Connection.id)).all()
        started = time.perf_counter()
        for connection_id in ids:
            runs.trigger(db.session.get(Connection, connection_id), trigger="schedule")
        baseline = time.perf_counter() - started
        db.session.execute(delete(Run))
        db.session.execute(update(Connection).values(next_run_at=DUE))
        db.session.commit()
    db.engine.dispose()

    clock = os.path.join(workdir, "clock")
    with open(clock, "w") as f:
        f.write((DUE - timedelta(minutes=1)).isoformat())
    # Production settings: every step on at its default interval, the alerts and freshness
    # steps included. Every step also runs once when a supervisor starts; the connections
    # were created now and the clock stands in 2030, so they look 4 years old and never
    # synced, and that first alerts step opens one "no recent success" alert per connection
    # (the worst case: a first start after an import or an outage). --firing-only turns
    # alerts and freshness off, as this benchmark did before alerts were opened in bulk
    # (docs/PERFORMANCE.md, "Supervisor scale").
    settings = {"ALERT_INTERVAL_SECONDS": 0, "FRESHNESS_INTERVAL_SECONDS": 0} if firing_only else {}
    supervisors = [SupervisorProcess(app, name=f"scale-sup-{i}", clock_file=clock, **settings).start()
                   for i in range(2)]
    try:
        from scheduler.supervisor import heartbeat_key

        deadline = time.monotonic() + 120
        while not all(redis_ext.client.exists(heartbeat_key(s.name, app.config["REDIS_PREFIX"])) for s in supervisors):
            if time.monotonic() > deadline:
                raise RuntimeError("supervisors did not start ticking")
            time.sleep(0.2)
        start_wall = datetime.utcnow()  # noqa: DTZ003 (created_at is naive UTC)
        with open(clock, "w") as f:
            f.write(DUE.isoformat())
        deadline = time.monotonic() + timeout
        while True:
            db.session.rollback()
            fired = db.session.scalar(select(func.count()).select_from(Run).where(Run.trigger == "schedule"))
            if fired >= n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(2 * float(app.config["SUPERVISOR_TICK_SECONDS"]))  # a late duplicate would show by now
        db.session.rollback()
        created = sorted((c - start_wall).total_seconds() for c in db.session.scalars(
            select(Run.created_at).where(Run.trigger == "schedule")))
        per_connection = dict(db.session.execute(
            select(Run.connection_id, func.count()).where(Run.trigger == "schedule").group_by(Run.connection_id)).all())
    finally:
        for s in supervisors:
            s.kill()
            s.proc.wait()
    twice = sum(1 for count in per_connection.values() if count > 1)
    alerts_open = db.session.scalar(select(func.count()).select_from(Alert).where(Alert.cleared_at.is_(None)))
    db.session.rollback()
    return {"alerts": alerts_open, "baseline": baseline, "fired": len(per_connection), "runs": len(created), "twice": twice,
            "missing": n - len(per_connection), "p50": _pick(created, 50), "p99": _pick(created, 99),
            "first": created[0] if created else None, "last": created[-1] if created else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every slot")
    parser.add_argument("--baseline", action="store_true", help="also time a bare trigger loop first")
    parser.add_argument("--firing-only", action="store_true",
                        help="alerts and freshness steps off (the default is production settings, all steps on)")
    args = parser.parse_args()

    from tests.support import TEST_KEY, RedisServer
    from webapp import create_app

    os.environ["SYNCHUB_LOG_LEVEL"] = "WARNING"
    redis_server = RedisServer().start()
    workdir = tempfile.mkdtemp(prefix="synchub-bench-scale-")
    steps = "alerts and freshness off" if args.firing_only else "every step on, production intervals"
    print(f"{args.connections} connections (hourly:0) due at the same instant, 2 supervisors ({steps})\n")
    print(f"{'backend':<11}{'baseline s':>11}{'first slot s':>13}{'last slot s':>12}{'lag p50 s':>10}{'lag p99 s':>10}"
          f"{'fired':>8}{'twice':>7}{'missing':>9}{'alerts':>8}")
    try:
        for backend in args.backends.split(","):
            database = ThrowawayDatabase(backend, workdir)
            try:
                instance = tempfile.mkdtemp(dir=workdir)
                os.environ["SYNCHUB_INSTANCE_PATH"] = instance
                _migrate(database.url, instance)
                app = create_app({"SQLALCHEMY_DATABASE_URI": database.url, "REDIS_URL": redis_server.url,
                                  "SYNCHUB_ENCRYPTION_KEYS": TEST_KEY})
                with app.app_context():
                    r = measure(app, args.connections, workdir, args.timeout, args.baseline, args.firing_only)
                    from webapp.extensions import db

                    db.session.remove()
                    db.engine.dispose()
                last = "-" if r["last"] is None else f"{r['last']:.1f}"
                first = "-" if r["first"] is None else f"{r['first']:.1f}"
                baseline = "-" if r["baseline"] is None else f"{r['baseline']:.1f}"
                print(f"{backend:<11}{baseline:>11}{first:>13}{last:>12}{r['p50']:>10.1f}{r['p99']:>10.1f}"
                      f"{r['fired']:>8}{r['twice']:>7}{r['missing']:>9}{r['alerts']:>8}  (target: last slot <= 60 s, twice 0, "
                      f"missing 0)", flush=True)
            finally:
                database.drop()
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()
