"""The statistics page (/admin/stats) and each connection's report with its CSV: runs by
outcome, success rate, durations, records per run, retries, rate-limit waits, webhook
deliveries and outbox events, over 24 h, 7 d, 30 d or 90 d. Figures come from webapp/stats.py; charts are SVG drawn
here (charts.py), each beside a table with the same numbers."""
import csv
import io

from flask import Response, abort, render_template, request

from .. import stats
from ..error_words import run_error_words
from ..extensions import db
from ..models import Connection
from . import charts
from .blueprint import bp

REPORT_RUNS = 50


def _window():
    key = request.args.get("window", stats.DEFAULT_WINDOW)
    if key not in stats.WINDOWS:
        abort(400, description=f"the window must be one of {', '.join(stats.WINDOWS)}")
    return stats.window(key)


def _label(win, start):
    if win.bucket.total_seconds() < 86400:
        return start.strftime("%m-%d %H:%M") if win.key != "24h" else start.strftime("%H:%M")
    return start.strftime("%Y-%m-%d")


def figures(win, connection=None):
    """Everything both pages show: the figures, their charts and their table rows."""
    runs = stats.run_stats(win, connection)
    labels = [_label(win, b.start) for b in runs.buckets]
    webhooks = stats.webhook_series(win, connection)
    outbox = stats.outbox_series(win, connection)
    prefix = f"c{connection.id}-" if connection else ""
    rate = [{"success_rate": None if b.success_rate is None else round(100 * b.success_rate, 1)} for b in runs.buckets]
    return {
        "tables": tables(labels, runs, webhooks, outbox),
        "window": win, "runs": runs, "labels": labels, "webhooks": webhooks, "outbox": outbox,
        "webhook_outcomes": stats.WEBHOOK_OUTCOMES, "outbox_outcomes": stats.OUTBOX_OUTCOMES,
        "notes": {"durations": stats.PERCENTILE_NOTE if stats.rollup_period(win) else None,
                  "waits": "Seconds the runs' requests waited for rate-limit budget or a provider's Retry-After."},
        "charts": {
            "outcomes": charts.stacked_bars(
                prefix + "chart-outcomes", "Runs by outcome", "Runs created in each period, stacked by outcome.",
                labels, [b.by_status for b in runs.buckets], stats.RUN_OUTCOMES),
            "success": charts.lines(
                prefix + "chart-success", "Success rate", "Completed runs as a percentage of completed and failed runs.",
                labels, rate, ("success_rate",), unit="%", max_value=100),
            "durations": charts.lines(
                prefix + "chart-durations", "Run duration", "Median (p50) and 95th percentile (p95) run duration, seconds.",
                labels, [{"p50": b.p50, "p95": b.p95} for b in runs.buckets], ("p50", "p95"), unit="s"),
            "records": charts.stacked_bars(
                prefix + "chart-records", "Records written", "Records created, updated, deleted and skipped per period.",
                labels, [b.records for b in runs.buckets], stats.RECORD_COUNTERS),
            "retries": charts.stacked_bars(
                prefix + "chart-retries", "Retries", "Attempts beyond the first (rate limits, outages, lost workers).",
                labels, [{"retries": b.retries} for b in runs.buckets], ("retries",)),
            "waits": charts.stacked_bars(
                prefix + "chart-waits", "Rate-limit waits",
                "Seconds spent waiting for rate-limit budget or a provider's Retry-After, by the runs created in each period.",
                labels, [{"seconds": round(b.rate_limit_wait_seconds, 1)} for b in runs.buckets], ("seconds",)),
            "webhooks": charts.stacked_bars(
                prefix + "chart-webhooks", "Webhook deliveries", "Webhook deliveries received, by outcome.",
                labels, [counts for _, counts in webhooks], stats.WEBHOOK_OUTCOMES),
            "outbox": charts.stacked_bars(
                prefix + "chart-outbox", "Outbox events", "Outbox events published, by their state now.",
                labels, [counts for _, counts in outbox], stats.OUTBOX_OUTCOMES),
        },
    }


def tables(labels, runs, webhooks, outbox):
    """(id, caption, header, rows) of each figure: the chart's numbers, one row per period."""
    b = list(zip(labels, runs.buckets))
    return [
        ("outcomes", "Runs by outcome", ["Period", "Runs", *stats.RUN_OUTCOMES],
         [[label, x.runs, *(x.by_status[s] for s in stats.RUN_OUTCOMES)] for label, x in b]),
        ("success", "Success rate", ["Period", "Completed", "Failed", "Success rate"],
         [[label, x.by_status["completed"], x.by_status["failed"], _percent(x.success_rate)] for label, x in b]),
        ("durations", "Run duration", ["Period", "p50 (s)", "p95 (s)"],
         [[label, _dash(x.p50), _dash(x.p95)] for label, x in b]),
        ("records", "Records per run", ["Period", "Runs", *(k.capitalize() for k in stats.RECORD_COUNTERS),
                                        "Created per run", "Updated per run"],
         [[label, x.runs, *(x.records[k] for k in stats.RECORD_COUNTERS), _dash(x.per_run("created")),
           _dash(x.per_run("updated"))] for label, x in b]),
        ("retries", "Retries", ["Period", "Retries"], [[label, x.retries] for label, x in b]),
        ("waits", "Rate-limit waits", ["Period", "Seconds waited"],
         [[label, round(x.rate_limit_wait_seconds, 1)] for label, x in b]),
        ("webhooks", "Webhook deliveries by outcome", ["Period", *stats.WEBHOOK_OUTCOMES],
         [[label, *(counts[o] for o in stats.WEBHOOK_OUTCOMES)] for label, (_, counts) in zip(labels, webhooks)]),
        ("outbox", "Outbox events by state", ["Period", *stats.OUTBOX_OUTCOMES],
         [[label, *(counts[o] for o in stats.OUTBOX_OUTCOMES)] for label, (_, counts) in zip(labels, outbox)]),
    ]


def _percent(rate):
    return "—" if rate is None else f"{100 * rate:.1f}%"


def _dash(value):
    return "—" if value is None else value


@bp.route("/stats")
def stats_page():
    win = _window()
    connection = None
    if request.args.get("connection"):
        key = request.args["connection"]
        connection = db.session.get(Connection, int(key)) if key.isdigit() else None
        if connection is None:
            abort(404, description=f"there is no connection {key}")
    connections = db.session.execute(db.select(Connection.id, Connection.name).order_by(Connection.name)).all()
    return render_template("admin/stats.html", connection=connection, connections=connections,
                           per_connection=None if connection else stats.per_connection(win),
                           windows=list(stats.WINDOWS), **_with_f(figures(win, connection)))


@bp.route("/stats/connections/<int:connection_id>")
def connection_report(connection_id):
    connection = db.get_or_404(Connection, connection_id)
    win = _window()
    return render_template("admin/report.html", connection=connection, windows=list(stats.WINDOWS),
                           recent=stats.recent_runs(connection, REPORT_RUNS), report_runs=REPORT_RUNS,
                           error_words=run_error_words, **_with_f(figures(win, connection)))


@bp.route("/stats/connections/<int:connection_id>/report.csv")
def connection_report_csv(connection_id):
    """?kind=series (one row per period, the default) or ?kind=runs (the last runs)."""
    connection = db.get_or_404(Connection, connection_id)
    win = _window()
    kind = request.args.get("kind", "series")
    if kind not in ("series", "runs"):
        abort(400, description="kind must be series or runs")
    out = io.StringIO()
    writer = csv.writer(out)
    if kind == "series":
        runs = stats.run_stats(win, connection)
        writer.writerow(["period_start_utc", "runs", *stats.RUN_OUTCOMES, "success_rate", "duration_p50_s",
                         "duration_p95_s", *(f"records_{k}" for k in stats.RECORD_COUNTERS), "retries",
                         "rate_limit_wait_s"])
        for b in runs.buckets + [runs.total]:
            writer.writerow([b.start.isoformat() + "Z" if b is not runs.total else "whole window", b.runs,
                             *(b.by_status[s] for s in stats.RUN_OUTCOMES), _blank(b.success_rate and round(b.success_rate, 4)),
                             _blank(b.p50),
                             _blank(b.p95), *(b.records[k] for k in stats.RECORD_COUNTERS), b.retries,
                             round(b.rate_limit_wait_seconds, 1)])
    else:
        writer.writerow(["run_id", "created_at_utc", "mode", "trigger", "status", "duration_s", "seen", "created",
                         "updated", "unchanged", "deleted", "skipped", "attempts", "error"])
        for run in stats.recent_runs(connection, REPORT_RUNS):
            duration = (run.finished_at - run.started_at).total_seconds() if run.started_at and run.finished_at else ""
            writer.writerow([run.id, run.created_at.isoformat() + "Z", run.mode, run.trigger, run.status,
                             _blank(round(duration, 3) if duration != "" else None), run.seen, run.created,
                             run.updated, run.unchanged, run.deleted, run.failed, run.attempt,
                             f"{run_error_words(run.error_class)}: {run.error_message}" if run.error_message else ""])
    safe_name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in connection.name)
    filename = f"synchub-{safe_name}-{kind}-{win.key}.csv"
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _with_f(figs):
    return dict(figs, f=figs)


def _blank(value):
    return "" if value is None else value
