"""Statistics over a generated history: every figure equals what the rows say (computed
here in Python, independently), the runs queries use the (connection_id, created_at) index,
and the CSV report and GET /api/stats carry the same numbers (issue 18)."""
import csv
import io
import math
from datetime import timedelta

from sqlalchemy import text

from tests.stats_history import generate
from tests.webapp.admin.support import admin_user  # noqa: F401  (fixture)
from webapp import stats
from webapp.extensions import db
from webapp.models import Run, utcnow


def _expected(win, rows):
    """Per bucket: status counts, record sums, retries and nearest-rank p50/p95, from ORM rows."""
    n = len(win.starts)
    buckets = [{"by_status": dict.fromkeys(stats.RUN_OUTCOMES, 0), "created": 0, "skipped": 0, "retries": 0,
                "durations": []} for _ in range(n)]
    for run in rows:
        if not win.since <= run.created_at < win.until:
            continue
        b = buckets[int((run.created_at - win.since).total_seconds() // win.bucket.total_seconds())]
        b["by_status"][run.status] += 1
        b["created"] += run.created
        b["skipped"] += run.failed
        b["retries"] += max(run.attempt - 1, 0)
        if run.status in ("completed", "failed"):
            b["durations"].append((run.finished_at - run.started_at).total_seconds())
    return buckets


def _rank(values, p):
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1] if ordered else None


def test_run_stats_equal_the_rows_per_bucket_and_in_total(app, make_connection):
    a, b = make_connection(name="a"), make_connection(name="b")
    now = utcnow()
    generate([a.id, b.id], 3000, now, days=35)
    rows = db.session.query(Run).all()
    for key in ("24h", "7d", "30d"):
        win = stats.window(key, now)
        got = stats.run_stats(win)
        expected = _expected(win, rows)
        assert sum(x.runs for x in got.buckets) == sum(sum(e["by_status"].values()) for e in expected) > 0
        for bucket, want in zip(got.buckets, expected):
            assert bucket.by_status == want["by_status"], (key, bucket.start)
            assert (bucket.records["created"], bucket.records["skipped"], bucket.retries) == (
                want["created"], want["skipped"], want["retries"])
            for p, value in ((50, bucket.p50), (95, bucket.p95)):
                wanted = _rank(want["durations"], p)
                assert (value is None and wanted is None) or abs(value - wanted) < 0.01, (key, p, value, wanted)
        every = [d for e in expected for d in e["durations"]]
        assert abs(got.total.p95 - _rank(every, 95)) < 0.01
    one = stats.run_stats(stats.window("30d", now), a)
    assert one.total.runs == sum(1 for r in rows if r.connection_id == a.id and r.created_at >= stats.window("30d", now).since)


def test_runs_queries_read_only_the_window_through_an_index(app, make_connection):
    a, b = make_connection(name="a"), make_connection(name="b")
    generate([a.id, b.id], 2000, utcnow(), days=90)
    db.session.execute(text("ANALYZE"))
    win = stats.window("7d")
    explain = "EXPLAIN QUERY PLAN " if db.engine.dialect.name == "sqlite" else "EXPLAIN "
    if db.engine.dialect.name != "sqlite":
        db.session.execute(text("SET LOCAL enable_seqscan = off"))  # tiny tables: ask whether an index CAN serve
    for connection, index in ((a, "ix_runs_connection_created"),
                              (None, "PRIMARY KEY" if db.engine.dialect.name == "sqlite" else "pk_runs")):
        where = stats.scope(win, connection)
        sql = f"SELECT status, COUNT(*) FROM {where.source} WHERE {where.where} GROUP BY status"
        plan = " ".join(str(row) for row in db.session.execute(text(explain + sql), where.params).all())
        assert index in plan, (connection, plan)
        assert "SCAN runs" not in plan.replace("SCAN runs USING", ""), plan
    first = stats._first_id(win)
    assert first == db.session.query(db.func.min(Run.id)).filter(Run.created_at >= win.since).scalar()


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
    runs_csv = list(csv.DictReader(io.StringIO(client.get(
        f"/admin/stats/connections/{a.id}/report.csv?kind=runs").get_data(as_text=True))))
    assert len(runs_csv) == 50 and int(runs_csv[0]["run_id"]) == db.session.query(db.func.max(Run.id)).scalar()
    token = create_token("stats")
    api = client.get("/api/stats?days=7&connection=a", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert api["bucket_seconds"] == 6 * 3600
    assert sum(point["runs"] for point in api["series"]) == sum(x.runs for x in got.buckets)
    assert client.get("/admin/stats?window=1y").status_code == 400
