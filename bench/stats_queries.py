"""Statistics queries over a large generated history: how long the statistics page's figures
take (webapp/stats.py: GROUP BY and window functions on the (connection_id, created_at)
index) at 1,000,000 runs, next to the baseline of loading the window's runs into Python and
counting there (what GET /api/stats did before issue 18).

    .venv/bin/python -m bench.stats_queries [--runs 1000000] [--connections 20] [--days 365] [--repeat 3]

SQLite in a temporary file (the default database). Each figure is timed --repeat times;
the report gives the range (min-max) in ms.
"""
import argparse
import os
import tempfile
import time
from datetime import timedelta


def _timed(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), max(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="synchub-stats-bench-")
    os.environ["SYNCHUB_INSTANCE_PATH"] = workdir
    from cryptography.fernet import Fernet
    from sqlalchemy import select, text

    from webapp import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir}/bench.db", "REDIS_URL": "",
                      "SYNCHUB_ENCRYPTION_KEYS": Fernet.generate_key().decode()})
    with app.app_context():
        from flask_migrate import upgrade

        from tests.stats_history import generate
        from webapp import stats
        from webapp.extensions import db
        from webapp.models import Connection, Run, utcnow

        upgrade()
        connections = [Connection(name=f"c{i}", connector="sandbox", settings={}) for i in range(args.connections)]
        db.session.add_all(connections)
        db.session.commit()
        now = utcnow()
        start = time.perf_counter()
        generate([c.id for c in connections], args.runs, now, days=args.days, batch=50_000)
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        print(f"generated {args.runs:,} runs over {args.days} days, {args.connections} connections "
              f"in {time.perf_counter() - start:.0f} s")
        one = connections[0]

        def naive(win, connection=None):
            query = select(Run.status, Run.started_at, Run.finished_at, Run.created).where(Run.created_at >= win.since)
            if connection is not None:
                query = query.where(Run.connection_id == connection.id)
            rows = db.session.execute(query).all()
            durations = sorted((f - s).total_seconds() for _, s, f, _ in rows if s and f)
            return len(rows), durations[len(durations) // 2] if durations else None

        print(f"{'figure':<44} {'ours ms (min-max)':>20} {'baseline ms (min-max)':>24}")
        for key in ("24h", "7d", "30d", "90d"):
            win = stats.window(key, now)
            for label, connection in (("all connections", None), ("one connection", one)):
                ours = _timed(lambda: stats.run_stats(win, connection), args.repeat)
                base = _timed(lambda: naive(win, connection), args.repeat)
                print(f"run_stats {key:<4} {label:<30} {ours[0]:>9.1f}-{ours[1]:<9.1f} {base[0]:>11.1f}-{base[1]:<11.1f}")
            page = _timed(lambda: (stats.run_stats(win), stats.per_connection(win), stats.webhook_series(win),
                                   stats.outbox_series(win)), args.repeat)
            print(f"whole statistics page {key:<22} {page[0]:>9.1f}-{page[1]:<9.1f}")
        plan = db.session.execute(text(
            "EXPLAIN QUERY PLAN SELECT status, COUNT(*) FROM runs WHERE connection_id IN (1, 2) "
            "AND created_at >= :since GROUP BY status"), {"since": now - timedelta(days=7)}).all()
        print("plan:", "; ".join(str(row[-1]) for row in plan))


if __name__ == "__main__":
    main()
