"""A generated run history for the statistics tests and bench/stats_queries.py: `count` runs
spread over `days` days before `now`, in time order, over the given connections, with
realistic outcomes, durations, counters, retries and rate-limit waits, inserted in large
batches of Core INSERTs; then the roll-ups are rebuilt from them (webapp/rollups.py), as the
migration that added them filled them from the runs already there."""
import random
from datetime import timedelta

from webapp import rollups
from webapp.extensions import db
from webapp.models import Run

OUTCOMES = (("completed", 0.86), ("failed", 0.08), ("cancelled", 0.06))


def generate(connection_ids, count, now, days=90, seed=7, batch=20_000, rebuild=True):
    rng = random.Random(seed)
    table = Run.__table__
    span = days * 86400
    rows = []
    # Ids grow with time, as in a real history: a window's runs are neighbours in the table.
    moments = sorted(now - timedelta(seconds=rng.uniform(1, span)) for _ in range(count))
    for i, created in enumerate(moments):
        status = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
        started = created + timedelta(seconds=rng.uniform(0.1, 5))
        duration = rng.lognormvariate(3, 1.1)
        seen = rng.randint(0, 5000)
        created_count = rng.randint(0, seen // 4)
        updated = rng.randint(0, (seen - created_count) // 2)
        skipped = rng.randint(0, 3) if rng.random() < 0.1 else 0
        attempt = 1 + (rng.random() < 0.07) + (rng.random() < 0.02)
        waited = round(rng.uniform(0.5, 120), 2) if rng.random() < 0.1 else 0.0
        rows.append({
            "connection_id": connection_ids[i % len(connection_ids)], "streams": [], "mode": "full", "params": {},
            "trigger": "schedule", "status": status, "attempt": attempt, "max_attempts": 3, "seen": seen,
            "created": created_count, "updated": updated, "unchanged": seen - created_count - updated,
            "deleted": rng.randint(0, 3), "failed": skipped, "processed": seen, "total": seen,
            "created_at": created, "started_at": started, "finished_at": started + timedelta(seconds=duration),
            "cancel_requested": False, "rate_limit_wait_seconds": waited, "error_class": "transient" if status == "failed" else None,
            "error_message": "the provider was unreachable (generated)" if status == "failed" else None,
        })
        if len(rows) >= batch:
            db.session.execute(table.insert(), rows)
            db.session.commit()
            rows = []
    if rows:
        db.session.execute(table.insert(), rows)
        db.session.commit()
    if rebuild:
        rollups.rebuild()
