"""Statistics over a generated history: every count and sum equals what the rows say
(computed here in Python, independently), percentiles within the roll-ups' stated error; the
roll-ups are kept exactly once whichever path ends a run (worker, retry, sweep, cancel, in
racing processes); the queries use indexes; the migration fills the roll-ups from the runs
already there; the CSV report and GET /api/stats carry the same numbers (issue 18)."""
import csv
import io
import math
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import func, select, text

from tests.conftest import BACKENDS, make_app
from tests.stats_history import generate
from tests.support import Database, race_in_processes
from tests.webapp.admin.support import admin_user  # noqa: F401  (fixture)
from webapp import rollups, runs, stats
from webapp.extensions import db
from webapp.models import CANCELLED, COMPLETED, FAILED, RUNNING, TERMINAL_STATUSES, Connection, Run, run_rollups, utcnow


def _expected(win, rows):
    """Per bucket: status counts, record sums, retries, waits and durations, from ORM rows."""
    n = len(win.starts)
    buckets = [{"by_status": dict.fromkeys(stats.RUN_OUTCOMES, 0), "created": 0, "updated": 0, "deleted": 0,
                "skipped": 0, "seen": 0, "retries": 0, "waits": 0.0, "durations": []} for _ in range(n)]
    for run in rows:
        if not win.since <= run.created_at < win.until:
            continue
        b = buckets[int((run.created_at - win.since).total_seconds() // win.bucket.total_seconds())]
        b["by_status"][run.status] += 1
        for name in ("created", "updated", "deleted", "seen"):
            b[name] += getattr(run, name)
        b["skipped"] += run.failed
        b["retries"] += max(run.attempt - 1, 0)
        b["waits"] += run.rate_limit_wait_seconds
        if run.status in ("completed", "failed") and run.started_at and run.finished_at:
            b["durations"].append((run.finished_at - run.started_at).total_seconds())
    return buckets


def _rank(values, p):
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1] if ordered else None


def _close(value, exact):
    """A histogram percentile against the exact one: within the stated relative error."""
    if exact is None:
        return value is None
    return abs(value - exact) <= exact * rollups.RELATIVE_ERROR + 0.001


def _active_runs(connections, now):
    """One running run per connection, with counters, a retry and waits: read from `runs`."""
    for connection in connections:
        run = runs.trigger(connection, enqueue=False).run
        attempt = runs.claim(run.id, "w")
        assert runs.record_page(run.id, attempt, checkpoint={}, counts={"seen": 40, "created": 7}, processed=40,
                                total=None, phase="page", waited=2.5)[0]
        db.session.execute(sa.update(Run).where(Run.id == run.id).values(attempt=2, created_at=now - timedelta(minutes=30)))
        db.session.commit()


def test_run_stats_equal_the_rows_per_bucket_and_in_total(app, make_connection):
    a, b = make_connection(name="a"), make_connection(name="b")
    now = utcnow()
    generate([a.id, b.id], 3000, now, days=35)
    _active_runs([a, b], now)
    rows = db.session.query(Run).all()
    assert sum(r.status == RUNNING for r in rows) == 2
    for key in ("24h", "7d", "30d"):
        win = stats.window(key, now)
        assert stats.rollup_period(win) == (rollups.HOUR if key != "30d" else rollups.DAY)
        got = stats.run_stats(win)
        expected = _expected(win, rows)
        assert sum(x.runs for x in got.buckets) == sum(sum(e["by_status"].values()) for e in expected) > 0
        for bucket, want in zip(got.buckets, expected):
            assert bucket.by_status == want["by_status"], (key, bucket.start)
            assert (bucket.records["created"], bucket.records["updated"], bucket.records["deleted"],
                    bucket.records["skipped"], bucket.seen, bucket.retries) == (
                want["created"], want["updated"], want["deleted"], want["skipped"], want["seen"], want["retries"])
            assert abs(bucket.rate_limit_wait_seconds - want["waits"]) < 0.01
            for p, value in ((50, bucket.p50), (95, bucket.p95)):
                assert _close(value, _rank(want["durations"], p)), (key, p, value, _rank(want["durations"], p))
        every = [d for e in expected for d in e["durations"]]
        assert _close(got.total.p50, _rank(every, 50)) and _close(got.total.p95, _rank(every, 95))
        # The same counts as the query over the runs themselves (the one before roll-ups).
        before = stats.run_stats_from_runs(win)
        assert [x.by_status for x in got.buckets] == [x.by_status for x in before.buckets]
        assert got.total.records == before.total.records and got.total.retries == before.total.retries
        per = {c.name: t for c, t in stats.per_connection(win)}
        for connection in (a, b):
            mine = [r for r in rows if r.connection_id == connection.id and win.since <= r.created_at < win.until]
            assert per[connection.name].runs == len(mine)
            assert per[connection.name].records["created"] == sum(r.created for r in mine)
            assert abs(per[connection.name].rate_limit_wait_seconds - sum(r.rate_limit_wait_seconds for r in mine)) < 0.01
    one = stats.run_stats(stats.window("30d", now), a)
    assert one.total.runs == sum(1 for r in rows if r.connection_id == a.id and r.created_at >= stats.window("30d", now).since)
    assert one.total.by_status["running"] == 1


def _plan(sql, params):
    explain = "EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite" else "EXPLAIN "
    return " ".join(str(row) for row in db.session.execute(text(explain + sql), params).all())


def test_statistics_queries_read_only_the_window_through_indexes(app, make_connection):
    a, b = make_connection(name="a"), make_connection(name="b")
    generate([a.id, b.id], 2000, utcnow(), days=90)
    db.session.execute(text("ANALYZE"))
    sqlite = db.engine.dialect.name == "sqlite"
    if not sqlite:
        db.session.execute(text("SET LOCAL enable_seqscan = off"))  # tiny tables: ask whether an index CAN serve
    for key in ("7d", "90d"):
        win = stats.window(key)
        for connection, index in ((a, "sqlite_autoindex_run_rollups_1" if sqlite else "pk_run_rollups"),
                                  (None, "ix_run_rollups_period")):
            sql, params = stats.rollup_sql(win, connection, "bucket")
            plan = _plan(sql, params)
            assert index in plan, (key, connection, plan)
            if sqlite:  # PostgreSQL picks it by the status statistics; SQLite is told to (stats.rollup_sql)
                assert "ix_runs_status_heartbeat" in plan, plan  # the active runs, through the status index
            assert "SCAN run_rollups" not in plan and "SCAN runs" not in plan.replace("SCAN runs USING", ""), plan
            assert "Seq Scan" not in plan, plan
        sql, params = stats.rollup_sql(win, None, "connection", histogram=False)
        assert "ix_run_rollups_period" in _plan(sql, params)
    # The query over the runs themselves (windows not in whole hours) still reads only the window.
    win = stats.window("7d")
    for connection, index in ((a, "ix_runs_connection_created"), (None, "PRIMARY KEY" if sqlite else "pk_runs")):
        where = stats.scope(win, connection)
        plan = _plan(f"SELECT status, COUNT(*) FROM {where.source} WHERE {where.where} GROUP BY status", where.params)
        assert index in plan, (connection, plan)
    first = stats._first_id(win)
    assert first == db.session.query(db.func.min(Run.id)).filter(Run.created_at >= win.since).scalar()


def _rollup_totals():
    """{(period_seconds, connection_id, status): runs} of the roll-ups."""
    rows = db.session.execute(select(run_rollups.c.period_seconds, run_rollups.c.connection_id, run_rollups.c.status,
                                     func.sum(run_rollups.c.runs), func.sum(run_rollups.c.retries))
                              .group_by(run_rollups.c.period_seconds, run_rollups.c.connection_id,
                                        run_rollups.c.status)).all()
    db.session.rollback()
    return {(p, c, s): (int(n), int(r)) for p, c, s, n, r in rows}


def _from_runs():
    """The same, counted from the runs: what the roll-ups must hold."""
    rows = db.session.execute(select(Run.connection_id, Run.status, func.count(), func.sum(Run.attempt - 1))
                              .where(Run.status.in_(TERMINAL_STATUSES)).group_by(Run.connection_id, Run.status)).all()
    db.session.rollback()
    return {(p, c, s): (int(n), int(r)) for c, s, n, r in rows for p in rollups.PERIODS}


def test_a_retried_and_swept_run_counts_once_and_late_writes_add_nothing(app, make_connection):
    conn = make_connection()
    run = runs.trigger(conn, enqueue=False).run
    first = runs.claim(run.id, "w1")
    assert runs.retry_later(run.id, first, error_class="transient", error_message="the provider was down",
                            waited=1.5) == "queued"
    second = runs.claim(run.id, "w2")
    assert runs.sweep_stale(now=utcnow() + timedelta(hours=1), stale_after=60) == [(run.id, "queued")]
    assert _rollup_totals() == {}  # back in the queue twice: not finished
    third = runs.claim(run.id, "w3")
    assert runs.finish(run.id, third, COMPLETED, waited=2.0)
    # The zombies of attempts 1 and 2, and a second finish of attempt 3: none matches the row.
    assert not runs.finish(run.id, first, FAILED, error_message="late")
    assert not runs.finish(run.id, second, COMPLETED)
    assert not runs.finish(run.id, third, COMPLETED)
    assert runs.cancel(run.id) == COMPLETED
    assert runs.sweep_stale(now=utcnow() + timedelta(days=1), stale_after=0) == []
    assert _rollup_totals() == _from_runs() == {(p, conn.id, COMPLETED): (1, 2) for p in rollups.PERIODS}
    waited = db.session.execute(select(func.sum(run_rollups.c.rate_limit_wait_seconds))).scalar()
    assert waited == 2 * 3.5  # the hour's row and the day's, each with the attempts' waits
    # Rows written by a rebuild (or the migration) and by the upsert are the same rows.
    rollups.rebuild()
    assert _rollup_totals() == {(p, conn.id, COMPLETED): (1, 2) for p in rollups.PERIODS}
    another = runs.trigger(conn, enqueue=False).run
    attempt = runs.claim(another.id, "w")
    db.session.execute(sa.update(Run).where(Run.id == another.id).values(  # the same hour, whatever the clock
        created_at=select(Run.created_at).where(Run.id == run.id).scalar_subquery()))
    assert runs.finish(another.id, attempt, COMPLETED)
    assert _rollup_totals() == _from_runs() == {(p, conn.id, COMPLETED): (2, 2) for p in rollups.PERIODS}
    assert db.session.scalar(select(func.count()).select_from(run_rollups)) == 2


def _race_to_end(config, barrier, results):
    """Each process ends every running run its own way at the same moment: the worker
    finishing its attempt, the supervisor sweeping it as stale, a person cancelling it
    (its heartbeat is old: cancelled at once), a second worker failing it."""
    from webapp import create_app

    app = create_app(dict(config))
    with app.app_context():
        ids = db.session.execute(select(Run.id, Run.attempt).where(Run.status == RUNNING).order_by(Run.id)).all()
        db.session.rollback()
        role = barrier.wait() % 4  # each process's own index: every role is taken
        won = 0
        for run_id, attempt in ids:
            if role == 0:
                won += runs.finish(run_id, attempt, COMPLETED)
            elif role == 1:
                won += len(runs.sweep_stale(stale_after=60, candidates=None))
            elif role == 2:
                won += runs.cancel(run_id, requested_by="someone") == CANCELLED and 1 or 0
            else:
                won += runs.finish(run_id, attempt, FAILED, error_message="gave up")
        results.put(won)


def test_runs_ended_by_racing_processes_are_rolled_up_exactly_once(app, make_connection):
    connections = [make_connection(name=f"race{i}") for i in range(12)]
    stale = utcnow() - timedelta(hours=1)
    for connection in connections:
        run = runs.trigger(connection, enqueue=False).run
        runs.claim(run.id, "w")
        db.session.execute(sa.update(Run).where(Run.id == run.id).values(heartbeat_at=stale, max_attempts=1))
        db.session.commit()
    race_in_processes(app, _race_to_end, callers=8)
    statuses = db.session.execute(select(Run.status)).scalars().all()
    assert len(statuses) == 12 and all(s in TERMINAL_STATUSES for s in statuses), statuses
    totals = _rollup_totals()
    assert totals == _from_runs()
    assert sum(n for (p, _, _), (n, _) in totals.items() if p == rollups.DAY) == 12


def test_the_migration_fills_the_rollups_from_the_runs_already_there(tmp_path, redis_url):
    from flask_migrate import upgrade

    for backend in BACKENDS:
        database = Database(backend, str(tmp_path))
        try:
            app = make_app(database.url, redis_url, str(tmp_path / f"instance-{backend}"))
            with app.app_context():
                upgrade(revision="0005")
                now = utcnow()
                old = Connection(name="old", connector="sandbox", settings={})  # unchanged by 0006
                db.session.add(old)
                db.session.commit()
                connection_id = old.id
                with db.engine.begin() as conn:
                    for i in range(300):
                        created = now - timedelta(hours=i * 7.3)
                        status = ("completed", "failed", "cancelled", "queued")[i % 4] if i else "running"
                        conn.execute(text(
                            "INSERT INTO runs (connection_id, streams, mode, params, trigger, status, attempt, "
                            "max_attempts, seen, created, updated, unchanged, deleted, failed, processed, created_at, "
                            "started_at, finished_at, cancel_requested, deferrals) VALUES (:c, '[]', 'record', '{}', "
                            "'schedule', :status, :attempt, 3, :seen, 3, 1, 0, 0, 1, 0, :created, :started, :finished, "
                            "false, 0)"),
                            {"c": connection_id, "status": status, "attempt": 1 + i % 3, "seen": i,
                             "created": created, "started": created + timedelta(seconds=1),
                             "finished": created + timedelta(seconds=1 + i ** 1.5) if status in TERMINAL_STATUSES else None})
                upgrade()
                assert _rollup_totals() == _from_runs()
                assert len(_rollup_totals()) == 2 * 3
                terminal = db.session.execute(select(*rollups.COLUMNS).where(Run.status.in_(TERMINAL_STATUSES))).all()
                expected = rollups.aggregate(terminal)
                got = db.session.execute(select(run_rollups)).mappings().all()
                assert len(got) == len(expected)
                for row in got:
                    want = expected[(row["period_seconds"], row["connection_id"], row["period_start"], row["status"])]
                    for name, value in want.items():
                        assert abs(row[name] - value) < 1e-6, (name, row[name], value)
                    assert sum(row[f"d{k}"] for k in range(192)) == row["durations"]
                db.session.remove()
                db.engine.dispose()
        finally:
            database.drop()


def test_rate_limit_waits_of_a_run_reach_its_row_its_rollup_and_the_statistics(app, make_connection, redis):
    from tests.simulators.harness import RecordsAPI, SimulatorServer, make_records
    from worker.engine import execute_run

    api = RecordsAPI(make_records(250), auth_token="sekrit-token", page_size_max=1000)
    with SimulatorServer(api) as server:
        stream = {"path": "/items", "records_key": "items", "cursor_field": "updated_at",
                  "cursor_param": "updated_since", "since_param": "since", "until_param": "until",
                  "pagination": {"type": "page", "page_size": 100}}
        conn = make_connection(name="limited", connector="rest", settings={"base_url": server.url, "streams": {"items": stream}},
                               credentials={"token": "sekrit-token"})
        server.faults.rate_limit(retry_after=1)
        run = runs.trigger(conn, enqueue=False).run
        assert execute_run(run.id, redis_client=redis, worker_name="t") == COMPLETED
    db.session.expire_all()
    waited = db.session.get(Run, run.id).rate_limit_wait_seconds
    assert 0.9 <= waited < 30  # Retry-After: 1, measured on the client's clock
    rolled = db.session.execute(select(run_rollups.c.rate_limit_wait_seconds)
                                .where(run_rollups.c.period_seconds == rollups.HOUR)).scalar_one()
    assert abs(rolled - waited) < 1e-6
    day = stats.run_stats(stats.window("24h"))
    assert abs(day.total.rate_limit_wait_seconds - waited) < 1e-6
    assert abs(sum(b.rate_limit_wait_seconds for b in day.buckets) - waited) < 1e-6
    assert dict((c.name, round(t.rate_limit_wait_seconds, 3)) for c, t in stats.per_connection(stats.window("7d"))) == {
        "limited": round(waited, 3)}


def test_report_csv_and_api_series_carry_the_same_numbers(app, make_connection, admin_user):
    from tests.webapp.admin.support import login, new_client
    from webapp.api.auth import create_token

    a = make_connection(name="a")
    now = utcnow()
    generate([a.id], 400, now, days=6)
    win = stats.window("7d", now)
    got = stats.run_stats(win, a)
    client = new_client(app)
    login(client, admin_user)
    body = client.get(f"/admin/stats/connections/{a.id}/report.csv?window=7d&kind=series").get_data(as_text=True)
    table = list(csv.DictReader(io.StringIO(body)))
    assert len(table) == len(got.buckets) + 1 and table[-1]["period_start_utc"] == "whole window"
    assert [int(r["runs"]) for r in table[:-1]] == [x.runs for x in got.buckets]
    assert int(table[-1]["completed"]) == got.total.by_status["completed"]
    assert float(table[-1]["rate_limit_wait_s"]) == round(got.total.rate_limit_wait_seconds, 1) > 0
    runs_csv = list(csv.DictReader(io.StringIO(client.get(
        f"/admin/stats/connections/{a.id}/report.csv?kind=runs").get_data(as_text=True))))
    assert len(runs_csv) == 50 and int(runs_csv[0]["run_id"]) == db.session.query(db.func.max(Run.id)).scalar()
    token = create_token("stats")
    api = client.get("/api/stats?days=7&connection=a", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert api["bucket_seconds"] == 6 * 3600
    assert sum(point["runs"] for point in api["series"]) == sum(x.runs for x in got.buckets)
    assert api["runs"] == got.total.runs and api["by_status"]["failed"] == got.total.by_status["failed"]
    assert api["since"] == win.since.isoformat() + "Z" and api["records_skipped"] == got.total.records["skipped"]
    assert api["rate_limit_wait_seconds"] == round(got.total.rate_limit_wait_seconds, 1)
    assert [point["rate_limit_wait_seconds"] for point in api["series"]] == [
        round(x.rate_limit_wait_seconds, 1) for x in got.buckets]
    page = client.get("/admin/stats?window=7d").get_data(as_text=True)
    assert stats.PERCENTILE_NOTE in page and 'id="table-waits"' in page
    assert client.get("/admin/stats?window=1y").status_code == 400


def test_statistics_outlive_retention_of_the_runs_in_daily_rollups(app, make_connection):
    from webapp import retention

    conn = make_connection()
    ids = []
    for age in (40, 0):  # the newer run keeps the connection's latest, which retention never deletes
        run = runs.trigger(conn, enqueue=False).run
        attempt = runs.claim(run.id, "w")
        db.session.execute(sa.update(Run).where(Run.id == run.id).values(created_at=utcnow() - timedelta(days=age)))
        assert runs.finish(run.id, attempt, COMPLETED)
        db.session.execute(sa.update(Run).where(Run.id == run.id).values(
            finished_at=utcnow() - timedelta(days=age), started_at=utcnow() - timedelta(days=age)))
        db.session.commit()
        ids.append(run.id)
    counts = retention.cleanup(runs=30)
    assert counts["runs"] == 1 and db.session.get(Run, ids[0]) is None
    assert counts["hourly_rollups"] == 1  # the old run's hour; its day stays
    win = stats.window("90d")
    assert stats.run_stats(win, conn).total.by_status["completed"] == 2
    assert stats.run_stats_from_runs(win, conn).total.by_status["completed"] == 1


def test_period_starts_fall_in_their_own_bucket(app):
    """A roll-up's period start lies exactly on a bucket boundary: floating point must not
    put it in the bucket before (SQLite's julianday() did, for some hours of some days)."""
    since = stats.window("7d", utcnow()).since
    for bucket_seconds in (3600, 6 * 3600, 86400):
        sql = f"SELECT {stats._bucket_sql('CAST(:p AS timestamp)', bucket_seconds, on_boundaries=True)}"
        if db.engine.dialect.name == "sqlite":
            sql = f"SELECT {stats._bucket_sql(':p', bucket_seconds, on_boundaries=True)}"
        statement = text(sql).bindparams(sa.bindparam("p", type_=sa.DateTime()), sa.bindparam("since", type_=sa.DateTime()))
        for k in range(0, 24 * 14):
            start = since + timedelta(hours=k)
            got = db.session.execute(statement, {"p": start, "since": since}).scalar()
            assert got == k * 3600 // bucket_seconds, (bucket_seconds, start, got)
