"""One alerts step (webapp/alerts.py sync_alerts) on many connections: how long opening,
re-checking and clearing take (docs/PERFORMANCE.md, "Supervisor scale").

    .venv/bin/python -m bench.alerts_scale [--connections 10000] [--backends sqlite,postgresql]

N scheduled connections, each with three finished syncs: half of them three failures (a
consecutive_failures condition), the other half a success long ago; checked two days after
they were made, every one also has no recent success. One enabled `notify` connection, so
every change writes its notification into the outbox (nothing is sent). Timed, in process:
the first step (opens 1.5 N alerts), a second one (nothing changes), and one after the
schedules were switched to manual (clears the N no-recent-success alerts).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

from bench.common import ROOT, ThrowawayDatabase


def _migrate(url, instance):
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, check=True,
                   capture_output=True, env=dict(os.environ, DATABASE_URL=url, SYNCHUB_INSTANCE_PATH=instance))


def measure(n):
    from sqlalchemy import func, insert, select, update

    from webapp import alerts
    from webapp.extensions import db
    from webapp.models import Connection, OutboxEvent, Run, utcnow

    now = utcnow()
    db.session.execute(insert(Connection), [
        {"name": f"scale-{i}", "connector": "sandbox", "settings": {}, "schedule": "hourly:0"} for i in range(n)])
    notify = Connection(name="slack", connector="notify", settings={"format": "slack"})
    notify.credentials = {"url": "http://127.0.0.1:9/services/T000/B000/hook"}
    db.session.add(notify)
    db.session.commit()
    ids = db.session.scalars(select(Connection.id).where(Connection.name.like("scale-%")).order_by(Connection.id)).all()
    runs = []
    for k, connection_id in enumerate(ids):
        for j in range(3):
            status = "failed" if k % 2 == 0 or j > 0 else "completed"
            at = now - timedelta(hours=10 - j)
            runs.append({"connection_id": connection_id, "trigger": "schedule", "status": status,
                         "created_at": at, "started_at": at, "finished_at": at})
    db.session.execute(insert(Run), runs)
    db.session.commit()

    later = now + timedelta(days=2)
    timings = {}
    started = time.perf_counter()
    opened = alerts.sync_alerts(later)
    timings["open"] = (time.perf_counter() - started, len(opened.fired))
    started = time.perf_counter()
    again = alerts.sync_alerts(later)
    timings["again"] = (time.perf_counter() - started, len(again.fired) + len(again.cleared))
    db.session.execute(update(Connection).where(Connection.name.like("scale-%")).values(schedule="manual"))
    db.session.commit()
    started = time.perf_counter()
    cleared = alerts.sync_alerts(later)
    timings["clear"] = (time.perf_counter() - started, len(cleared.cleared))
    timings["outbox"] = db.session.scalar(select(func.count()).select_from(OutboxEvent))
    db.session.rollback()
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()

    from tests.support import TEST_KEY, RedisServer
    from webapp import create_app

    os.environ["SYNCHUB_LOG_LEVEL"] = "ERROR"
    redis_server = RedisServer().start()
    workdir = tempfile.mkdtemp(prefix="synchub-bench-alerts-")
    print(f"{args.connections} connections, one alerts step each line\n")
    print(f"{'backend':<11}{'open s':>9}{'opened':>8}{'again s':>9}{'clear s':>9}{'cleared':>9}{'outbox rows':>13}")
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
                    t = measure(args.connections)
                    from webapp.extensions import db

                    db.session.remove()
                    db.engine.dispose()
                print(f"{backend:<11}{t['open'][0]:>9.2f}{t['open'][1]:>8}{t['again'][0]:>9.2f}{t['clear'][0]:>9.2f}"
                      f"{t['clear'][1]:>9}{t['outbox']:>13}", flush=True)
            finally:
                database.drop()
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()
