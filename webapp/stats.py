"""Run statistics over a window, bucketed in time: what the statistics page, the
per-connection report and GET /api/stats show.

Finished runs come from their roll-ups (webapp/rollups.py: per connection, hour or day, and
status), read through the (period_seconds, period_start) index or the primary key for one
connection; the still-active runs (queued, running, waiting: few) from the runs table
through its status index, in the same statement, so one snapshot counts each run once.
Counts and sums equal the runs'; p50/p95 of the finished runs come from the roll-ups'
duration histograms, within rollups.RELATIVE_ERROR of the exact nearest-rank values
(PERCENTILE_NOTE says so where they are shown). A window whose buckets are not whole hours
is counted from the runs instead (the query before roll-ups: Scope), with exact
percentiles. tests/webapp/test_stats.py checks the plans; bench/stats_queries.py measures
both at a million runs.
"""
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text

from . import rollups
from .extensions import db
from .models import ACTIVE_STATUSES, ROLLUP_DURATION_BINS, TERMINAL_STATUSES, Connection, Run, utcnow

# window key -> (length, bucket length)
WINDOWS = {
    "24h": (timedelta(hours=24), timedelta(hours=1)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
    "30d": (timedelta(days=30), timedelta(days=1)),
    "90d": (timedelta(days=90), timedelta(days=3)),
}
DEFAULT_WINDOW = "7d"
RUN_OUTCOMES = ("completed", "failed", "cancelled", "running", "queued", "waiting")
RECORD_COUNTERS = ("created", "updated", "deleted", "skipped")
WEBHOOK_OUTCOMES = ("enqueued", "ignored", "failed", "received", "dispatching")
OUTBOX_OUTCOMES = ("done", "dead", "pending", "processing")
PERCENTILE_NOTE = (f"Durations p50/p95 are read from per-hour and per-day histograms of finished runs: within "
                   f"{100 * rollups.RELATIVE_ERROR:.1f}% of the exact value (for runs between 0.01 s and 39 h).")


@dataclass
class Window:
    key: str
    since: datetime
    until: datetime
    bucket: timedelta

    @property
    def starts(self):
        count = int((self.until - self.since) / self.bucket)
        return [self.since + i * self.bucket for i in range(count)]


def window(key=DEFAULT_WINDOW, now=None):
    """The window ending now (rounded up to a whole bucket), split into equal buckets."""
    length, bucket = WINDOWS[key]
    return window_of(length, bucket, key, now)


def window_of(length, bucket, key="custom", now=None):
    now = now or utcnow()
    step = bucket.total_seconds()
    epoch = datetime(2000, 1, 1)
    until = epoch + timedelta(seconds=((now - epoch).total_seconds() // step + 1) * step)
    return Window(key, until - length, until, bucket)


@dataclass
class Bucket:
    start: datetime
    by_status: dict = field(default_factory=lambda: dict.fromkeys(RUN_OUTCOMES, 0))
    records: dict = field(default_factory=lambda: dict.fromkeys(RECORD_COUNTERS, 0))
    seen: int = 0
    retries: int = 0  # attempts beyond the first (rate limits, outages, lost workers)
    rate_limit_wait_seconds: float = 0.0  # waited for rate-limit budget or Retry-After
    finished: int = 0  # completed, failed or cancelled
    finished_seen: int = 0  # records seen by those
    durations: int = 0  # completed and failed runs with a duration (those p50/p95 rank)
    duration_sum: float = 0.0
    p50: float | None = None
    p95: float | None = None

    @property
    def runs(self):
        return sum(self.by_status.values())

    @property
    def success_rate(self):
        """completed / (completed + failed); None when none finished either way."""
        finished = self.by_status["completed"] + self.by_status["failed"]
        return self.by_status["completed"] / finished if finished else None

    @property
    def mean_duration(self):
        return round(self.duration_sum / self.durations, 3) if self.durations else None

    @property
    def seen_per_finished_run(self):
        return round(self.finished_seen / self.finished, 1) if self.finished else None

    def per_run(self, name):
        return round(self.records[name] / self.runs, 1) if self.runs else None

    def as_dict(self):
        return {"start": self.start.isoformat() + "Z", "runs": self.runs, "by_status": dict(self.by_status),
                "success_rate": None if self.success_rate is None else round(self.success_rate, 4), "duration_seconds": {"p50": self.p50, "p95": self.p95},
                "records": dict(self.records), "seen": self.seen, "retries": self.retries,
                "rate_limit_wait_seconds": round(self.rate_limit_wait_seconds, 1)}


@dataclass
class RunStats:
    window: Window
    buckets: list  # of Bucket, oldest first
    total: Bucket  # the whole window (its percentiles over every run in it)


def connection_ids(connection=None):
    if connection is not None:
        return [connection.id]
    return list(db.session.execute(select(Connection.id).order_by(Connection.id)).scalars())


def _dialect():
    return db.session.get_bind().dialect.name


def _bucket_sql(column, seconds, on_boundaries=False):
    """SQL for the bucket number of `column` (0 = the first), counted from :since.
    on_boundaries: the column holds period starts, whole seconds on bucket boundaries; on
    SQLite julianday()'s floating point puts such a start a hair before its boundary (and so
    in the bucket before) unless the difference is rounded to the second first."""
    if seconds is None:
        return "0"
    if _dialect() == "postgresql":
        return f"CAST(FLOOR(EXTRACT(EPOCH FROM ({column} - CAST(:since AS timestamp))) / {int(seconds)}) AS INTEGER)"
    difference = f"(julianday({column}) - julianday(:since)) * 86400"
    if on_boundaries:
        difference = f"ROUND({difference})"
    return f"CAST({difference} / {int(seconds)} AS INTEGER)"


def _duration_sql():
    if _dialect() == "postgresql":
        return "EXTRACT(EPOCH FROM (finished_at - started_at))"
    return "((julianday(finished_at) - julianday(started_at)) * 86400)"


@dataclass
class Scope:
    """Which runs a query reads: FROM and WHERE, and their parameters. One connection: the
    (connection_id, created_at) index. All of them: the run ids from the window's first on,
    a range of the primary key (ids grow with time), read in table order; SQLite otherwise
    reads the window through the index one connection at a time, or scans the whole table."""
    source: str
    where: str
    params: dict


def scope(win, connection=None):
    params = {"since": win.since, "until": win.until}
    window = "created_at >= :since AND created_at < :until"
    sqlite = _dialect() != "postgresql"
    if connection is not None:
        return Scope("runs INDEXED BY ix_runs_connection_created" if sqlite else "runs",
                     f"connection_id = :connection AND {window}", dict(params, connection=connection.id))
    first = _first_id(win)
    return Scope("runs NOT INDEXED" if sqlite else "runs", f"id >= :first_id AND {window}",
                 dict(params, first_id=first if first is not None else 1 << 62))


def _first_id(win):
    """The smallest id of a run created in the window: per connection, from the index alone."""
    ids = connection_ids()
    if not ids:
        return None
    source = "runs INDEXED BY ix_runs_connection_created" if _dialect() != "postgresql" else "runs"
    statement = text(f"SELECT MIN(id) FROM {source} WHERE connection_id IN :ids AND created_at >= :since "  # noqa: S608  table, column and bucket SQL are this module's constants; values are bound
                     "AND created_at < :until").bindparams(bindparam("ids", expanding=True))
    return db.session.execute(statement, {"ids": ids, "since": win.since, "until": win.until}).scalar()


def _execute(sql, where):
    return db.session.execute(text(sql.format(source=where.source, where=where.where)), where.params).all()


def rollup_period(win):
    """The roll-ups' period (seconds) that tiles the window's buckets, or None."""
    bucket = win.bucket.total_seconds()
    for period in (rollups.DAY, rollups.HOUR):
        if bucket % period == 0 and (win.since - rollups.EPOCH).total_seconds() % period == 0:
            return period
    return None


_HISTOGRAM = ", ".join(f"SUM(d{k})" for k in range(ROLLUP_DURATION_BINS))
_NO_HISTOGRAM = ", ".join("0" for _ in range(ROLLUP_DURATION_BINS))
_ACTIVE = ", ".join(f"'{status}'" for status in ACTIVE_STATUSES)


def rollup_sql(win, connection, group, histogram=True):
    """(SQL, params) of the window's figures grouped by `group` ("bucket" or "connection"):
    the finished runs' roll-ups UNION ALL the active runs, columns: key, status, runs, seen,
    created, updated, deleted, skipped, retries, rate-limit seconds, durations, their sum[,
    histogram bins]."""
    period = rollup_period(win)
    seconds = win.bucket.total_seconds()
    params = {"since": win.since, "until": win.until, "period": period}
    only = ""
    if connection is not None:
        only = " AND connection_id = :connection"
        params["connection"] = connection.id
    key_rollup = _bucket_sql("period_start", seconds, on_boundaries=True) if group == "bucket" else "connection_id"
    key_runs = _bucket_sql("created_at", seconds) if group == "bucket" else "connection_id"
    bins_rollup = (", " + _HISTOGRAM) if histogram else ""
    bins_runs = (", " + _NO_HISTOGRAM) if histogram else ""
    # The active runs are few: through the status index, never the window's runs (SQLite
    # otherwise picks the (connection_id, created_at) index for one connection).
    active = "runs INDEXED BY ix_runs_status_heartbeat" if _dialect() != "postgresql" else "runs"
    sql = f"""
        SELECT {key_rollup} AS k, status, SUM(runs), SUM(seen), SUM(created), SUM(updated), SUM(deleted),
               SUM(skipped), SUM(retries), SUM(rate_limit_wait_seconds), SUM(durations),
               SUM(duration_sum){bins_rollup}
        FROM run_rollups WHERE period_seconds = :period AND period_start >= :since AND period_start < :until{only}
        GROUP BY k, status
        UNION ALL
        SELECT {key_runs} AS k, status, COUNT(*), SUM(seen), SUM(created), SUM(updated), SUM(deleted),
               SUM(failed), SUM(CASE WHEN attempt > 1 THEN attempt - 1 ELSE 0 END),
               SUM(rate_limit_wait_seconds), 0, 0{bins_runs}
        FROM {active} WHERE status IN ({_ACTIVE}) AND created_at >= :since AND created_at < :until{only}
        GROUP BY k, status"""  # noqa: S608  table, column and bucket SQL are this module's constants; values are bound
    return sql, params


_FIGURES = 10  # the columns before the histogram's


def _add_row(target, status, values):
    count, seen, created, updated, deleted, skipped, retries, waited, durations, duration_sum = (
        v or 0 for v in values[:_FIGURES])
    if status in target.by_status:
        target.by_status[status] += count
    if status in TERMINAL_STATUSES:
        target.finished += count
        target.finished_seen += seen
    target.durations += durations
    target.duration_sum += duration_sum
    target.seen += seen
    target.retries += retries
    target.rate_limit_wait_seconds += waited
    for name, value in zip(RECORD_COUNTERS, (created, updated, deleted, skipped)):
        target.records[name] += value


def run_stats(win, connection=None):
    """RunStats for the runs created in the window, of one connection or of all."""
    if rollup_period(win) is None:
        return run_stats_from_runs(win, connection)
    buckets = [Bucket(start) for start in win.starts]
    total = Bucket(win.since)
    histograms, every = {}, {}
    sql, params = rollup_sql(win, connection, "bucket")
    for b, status, *values in db.session.execute(text(sql), params).all():
        for target in ((buckets[b],) if 0 <= b < len(buckets) else ()) + (total,):
            _add_row(target, status, values)
        for k, count in enumerate(values[_FIGURES:]):
            if count:
                histograms.setdefault(b, {}).setdefault(k, 0)
                histograms[b][k] += count
                every[k] = every.get(k, 0) + count
    for b, histogram in histograms.items():
        if 0 <= b < len(buckets):
            buckets[b].p50, buckets[b].p95 = rollups.percentile(histogram, 50), rollups.percentile(histogram, 95)
    total.p50, total.p95 = rollups.percentile(every, 50), rollups.percentile(every, 95)
    return RunStats(win, buckets, total)


def run_stats_from_runs(win, connection=None):
    """RunStats counted from the runs themselves, exact percentiles (the query before the
    roll-ups; windows whose buckets are not whole hours, and the bench's comparison)."""
    where = scope(win, connection)
    seconds = win.bucket.total_seconds()
    buckets = [Bucket(start) for start in win.starts]
    total = Bucket(win.since)
    rows = _execute(f"""
        SELECT {_bucket_sql('created_at', seconds)} AS b, status, COUNT(*), COALESCE(SUM(seen), 0),
               COALESCE(SUM(created), 0), COALESCE(SUM(updated), 0), COALESCE(SUM(deleted), 0),
               COALESCE(SUM(failed), 0), COALESCE(SUM(CASE WHEN attempt > 1 THEN attempt - 1 ELSE 0 END), 0)
        FROM {{source}} WHERE {{where}} GROUP BY b, status""", where)  # noqa: S608  table, column and bucket SQL are this module's constants; values are bound
    for b, status, count, seen, created, updated, deleted, skipped, retries in rows:
        for target in ((buckets[b],) if 0 <= b < len(buckets) else ()) + (total,):
            if status in target.by_status:
                target.by_status[status] += count
            target.seen += seen
            target.retries += retries
            for name, value in zip(RECORD_COUNTERS, (created, updated, deleted, skipped)):
                target.records[name] += value
    by_bucket, every = _durations(where, seconds)
    for b, durations in by_bucket.items():
        if 0 <= b < len(buckets):
            buckets[b].p50, buckets[b].p95 = _rank(durations, 50), _rank(durations, 95)
    total.p50, total.p95 = _rank(every, 50), _rank(every, 95)
    return RunStats(win, buckets, total)


def _durations(where, seconds):
    """Durations of the window's finished runs, each bucket's and all of them, sorted. One
    read, sorted here: ranking in SQL (window functions) cost a sort and a pass per level,
    and even ORDER BY in SQLite cost more than Python's sort (bench/stats_queries.py)."""
    rows = _execute(f"""
        SELECT {_bucket_sql('created_at', seconds)} AS b, {_duration_sql()} AS d
        FROM {{source}} WHERE {{where}} AND status IN ('completed', 'failed')
          AND started_at IS NOT NULL AND finished_at IS NOT NULL""", where)  # noqa: S608  table, column and bucket SQL are this module's constants; values are bound
    by_bucket, every = {}, []
    for b, d in rows:
        by_bucket.setdefault(b, []).append(float(d))
    for values in by_bucket.values():
        values.sort()
        every += values
    every.sort()
    return by_bucket, every


def _rank(ordered, p):
    """Nearest rank: the value at rank ceil(p * n / 100) of n values in order."""
    if not ordered:
        return None
    return round(ordered[(p * len(ordered) + 99) // 100 - 1], 3)


def outcome_series(win, table, time_column, outcome_column, outcomes, connection=None):
    """[(bucket start, {outcome: count})] of webhook deliveries or outbox events. Naming
    every outcome lets the deliveries' index (outcome, received_at) serve the window."""
    seconds = win.bucket.total_seconds()
    series = [(start, dict.fromkeys(outcomes, 0)) for start in win.starts]
    where = f"{outcome_column} IN :outcomes AND {time_column} >= :since AND {time_column} < :until"
    params = {"outcomes": list(outcomes), "since": win.since, "until": win.until}
    statement = text(f"SELECT {_bucket_sql(time_column, seconds)} AS b, {outcome_column}, COUNT(*) FROM {table} "  # noqa: S608  table, column and bucket SQL are this module's constants; values are bound
                     f"WHERE {where}" + (" AND connection_id = :connection" if connection is not None else "")
                     + f" GROUP BY b, {outcome_column}").bindparams(bindparam("outcomes", expanding=True))
    if connection is not None:
        params["connection"] = connection.id
    for b, outcome, count in db.session.execute(statement, params).all():
        if 0 <= b < len(series):
            series[b][1][outcome] += count
    return series


def webhook_series(win, connection=None):
    return outcome_series(win, "webhook_deliveries", "received_at", "outcome", WEBHOOK_OUTCOMES, connection)


def outbox_series(win, connection=None):
    return outcome_series(win, "outbox_events", "created_at", "status", OUTBOX_OUTCOMES, connection)


def per_connection(win):
    """[(connection, Bucket of its whole window)] for every connection, busiest first."""
    if rollup_period(win) is None:
        return per_connection_from_runs(win)
    totals = {}
    sql, params = rollup_sql(win, None, "connection", histogram=False)
    for connection_id, status, *values in db.session.execute(text(sql), params).all():
        _add_row(totals.setdefault(connection_id, Bucket(win.since)), status, values)
    return _busiest_first(win, totals)


def _busiest_first(win, totals):
    connections = db.session.execute(select(Connection).order_by(Connection.name)).scalars().all()
    rows = [(c, totals.get(c.id, Bucket(win.since))) for c in connections]
    return sorted(rows, key=lambda row: -row[1].runs)


def per_connection_from_runs(win):
    """per_connection counted from the runs themselves (before the roll-ups)."""
    totals = {}
    rows = _execute(f"""
        SELECT connection_id, status, COUNT(*), COALESCE(SUM(created), 0), COALESCE(SUM(updated), 0),
               COALESCE(SUM(deleted), 0), COALESCE(SUM(failed), 0),
               COALESCE(SUM(CASE WHEN attempt > 1 THEN attempt - 1 ELSE 0 END), 0)
        FROM {{source}} WHERE {{where}} GROUP BY connection_id, status""", scope(win))
    for connection_id, status, count, created, updated, deleted, skipped, retries in rows:
        target = totals.setdefault(connection_id, Bucket(win.since))
        if status in target.by_status:
            target.by_status[status] += count
        target.retries += retries
        for name, value in zip(RECORD_COUNTERS, (created, updated, deleted, skipped)):
            target.records[name] += value
    return _busiest_first(win, totals)


def recent_runs(connection, limit=50):
    return db.session.execute(select(Run).where(Run.connection_id == connection.id)
                              .order_by(Run.id.desc()).limit(limit)).scalars().all()
