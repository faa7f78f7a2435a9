"""Roll-ups of finished runs: per connection, period (an hour and a day) and status, the
counts, counters, retries, rate-limit waits and a histogram of durations. The statistics
(webapp/stats.py) read these instead of every run, so a 90-day window over a million runs
reads a few thousand rows (bench/stats_queries.py, docs/PERFORMANCE.md).

Exactly once: a run is added when it becomes completed, failed or cancelled, in the same
transaction as the conditional UPDATE that made it so (webapp/runs.py). A terminal status
is final, and that UPDATE matches only when the run was not yet terminal: a swept, retried
or cancelled run, or a zombie worker's late write, changes no row and adds nothing. The
upsert (INSERT ... ON CONFLICT DO UPDATE) adds to the period's row under its row lock, so
two runs ending at once in the same period both count.

A run counts in the period it was created in, as the statistics always counted runs.

Durations: bin 0 holds runs under FIRST_EDGE seconds; bin k >= 1 holds
[FIRST_EDGE * 2**((k-1)/STEPS), FIRST_EDGE * 2**(k/STEPS)), the last bin everything above.
A percentile is the geometric middle of the bin that holds the nearest-rank value, so it is
within RELATIVE_ERROR (4.4 %) of the exact one for durations from 0.01 s to 39 h.
"""
import math
from datetime import datetime, timedelta

from functools import lru_cache

from sqlalchemy import DateTime, bindparam, delete, select, text

from .extensions import db
from .models import COMPLETED, FAILED, ROLLUP_COUNTERS, ROLLUP_DURATION_BINS, TERMINAL_STATUSES, Run, run_rollups

HOUR, DAY = 3600, 86400
PERIODS = (HOUR, DAY)
FIRST_EDGE = 0.01  # seconds
STEPS = 8  # bins per doubling
RELATIVE_ERROR = 2 ** (1 / (2 * STEPS)) - 1
EPOCH = datetime(2000, 1, 1)
# Hourly rows serve windows with buckets shorter than a day (24 h, 7 d); older ones go
# with retention (webapp/retention.py). Daily rows are kept: a few per connection a day.
HOURLY_KEEP_DAYS = 31
KEY = ("period_seconds", "connection_id", "period_start", "status")
ADDED = (*ROLLUP_COUNTERS, "duration_sum", "rate_limit_wait_seconds")

COLUMNS = (Run.connection_id, Run.created_at, Run.status, Run.seen, Run.created, Run.updated, Run.deleted,
            Run.failed, Run.attempt, Run.started_at, Run.finished_at, Run.rate_limit_wait_seconds)


def bin_of(seconds):
    if seconds < FIRST_EDGE:
        return 0
    return min(ROLLUP_DURATION_BINS - 1, int(math.log2(seconds / FIRST_EDGE) * STEPS) + 1)


def bin_value(k):
    """The duration a bin stands for: its geometric middle (bin 0: half its upper edge)."""
    if k == 0:
        return FIRST_EDGE / 2
    return FIRST_EDGE * 2 ** ((k - 0.5) / STEPS)


def percentile(histogram, p):
    """Nearest-rank percentile from {bin: count}, rounded like the exact ones; None if empty."""
    n = sum(histogram.values())
    if not n:
        return None
    rank = (p * n + 99) // 100
    seen = 0
    for k in sorted(histogram):
        seen += histogram[k]
        if seen >= rank:
            return round(bin_value(k), 3)
    return None  # unreachable: the counts reach n


def period_start(moment, seconds):
    return EPOCH + timedelta(seconds=((moment - EPOCH).total_seconds() // seconds) * seconds)


def contribution(row):
    """(values to add, duration bin or None) of one terminal run's row (COLUMNS order)."""
    (_, _, status, seen, created, updated, deleted, failed, attempt, started_at, finished_at, waited) = \
        row[:len(COLUMNS)]  # a longer row (runs.finish's RETURNING) starts with these
    values = {"runs": 1, "seen": seen or 0, "created": created or 0, "updated": updated or 0,
              "deleted": deleted or 0, "skipped": failed or 0, "retries": max((attempt or 0) - 1, 0),
              "durations": 0, "duration_sum": 0.0, "rate_limit_wait_seconds": float(waited or 0.0)}
    k = None
    # The durations the statistics rank: completed and failed runs that started.
    if status in (COMPLETED, FAILED) and started_at is not None and finished_at is not None:
        duration = (finished_at - started_at).total_seconds()
        values["durations"], values["duration_sum"] = 1, duration
        k = bin_of(duration)
    return values, k


def add_finished(run_id, row=None):
    """Add a run that has just become terminal to its periods' roll-ups. Call inside the
    transaction of the conditional UPDATE that made it terminal, only when it matched.
    `row`: the run's COLUMNS when that UPDATE returned them (one SELECT fewer)."""
    if row is None:
        row = db.session.execute(select(*COLUMNS).where(Run.id == run_id)).one()
    if row.status not in TERMINAL_STATUSES:
        raise ValueError(f"run {run_id} is {row.status}, not finished")
    values, k = contribution(row)
    rows = [dict(values, period_seconds=seconds, connection_id=row.connection_id,
                 period_start=period_start(row.created_at, seconds), status=row.status) for seconds in PERIODS]
    db.session.execute(_upsert(k), rows)


@lru_cache(maxsize=None)
def _upsert(k):
    """The upsert adding one run to a period's row, and 1 to its duration bin k (None: no
    duration). Written out once per bin: SQLAlchemy's on_conflict_do_update builds the
    192-column `excluded` collection on every call (10 ms a run). Same SQL on both databases."""
    names = [*KEY, *ADDED] + ([f"d{k}"] if k is not None else [])
    values = [f":{name}" for name in KEY + ADDED] + (["1"] if k is not None else [])
    added = [*ADDED] + ([f"d{k}"] if k is not None else [])
    sql = (f"INSERT INTO run_rollups ({', '.join(names)}) VALUES ({', '.join(values)}) "  # noqa: S608  column names are this module's constants; values are bound
           f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET "
           + ", ".join(f"{name} = run_rollups.{name} + excluded.{name}" for name in added))
    return text(sql).bindparams(bindparam("period_start", type_=DateTime()))


def aggregate(rows):
    """{key: {column: value}} of terminal runs' rows (COLUMNS order): what the roll-ups hold."""
    table = {}
    for row in rows:
        values, k = contribution(row)
        for seconds in PERIODS:
            key = (seconds, row[0], period_start(row[1], seconds), row[2])
            target = table.get(key)
            if target is None:
                target = table[key] = dict.fromkeys(ADDED, 0)
            for name, value in values.items():
                target[name] += value
            if k is not None:
                target[f"d{k}"] = target.get(f"d{k}", 0) + 1
    return table


def rebuild(batch=50_000):
    """Recompute every roll-up from the runs table (a generated history, a repair). Runs
    deleted by retention are gone from it: their roll-ups are lost by a rebuild."""
    db.session.execute(delete(run_rollups))
    table = aggregate(db.session.execute(select(*COLUMNS).where(Run.status.in_(TERMINAL_STATUSES))).all())
    write(db.session, table, batch)
    db.session.commit()


def write(session, table, batch=50_000):
    """Insert aggregated roll-ups (every bin column given, zeros included)."""
    bins = [f"d{k}" for k in range(ROLLUP_DURATION_BINS)]
    rows = []
    for (seconds, connection_id, start, status), values in table.items():
        rows.append({"period_seconds": seconds, "connection_id": connection_id, "period_start": start,
                     "status": status, **{name: values[name] for name in ADDED},
                     **{name: values.get(name, 0) for name in bins}})
        if len(rows) >= batch:
            session.execute(run_rollups.insert(), rows)
            rows = []
    if rows:
        session.execute(run_rollups.insert(), rows)


def prune_hourly(now):
    """Delete hourly roll-ups older than HOURLY_KEEP_DAYS (the daily ones stay). Returns rows deleted."""
    cutoff = now - timedelta(days=HOURLY_KEEP_DAYS)
    result = db.session.execute(delete(run_rollups).where(run_rollups.c.period_seconds == HOUR,
                                                          run_rollups.c.period_start < cutoff))
    db.session.commit()
    return result.rowcount or 0
