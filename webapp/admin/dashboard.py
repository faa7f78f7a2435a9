"""The dashboard: every connection with its health, last run and next run, and Sync now."""
import re

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from .. import connection_issues, runs, trigger_policy
from ..connectors import load_all
from ..connectors.base import REGISTRY
from ..connectors.errors import ConfigError
from ..extensions import db
from ..models import ACTIVE_STATUSES, WAITING, Connection, Run
from ..schedules.parser import ScheduleError, parse
from .blueprint import bp

SYNC_MODES = ("full", "incremental", "range")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def sync_options(connection):
    """What the Sync now control offers for this connection."""
    load_all()
    cls = REGISTRY.get(connection.connector)
    modes = [m for m in SYNC_MODES if cls is None or m in cls.supported_modes]
    streams = [s.name for s in getattr(cls, "streams", ())] if cls else []
    fiscal_years = [str(y) for y in (connection.settings or {}).get("fiscal_years") or []]
    return {"modes": modes, "streams": streams if len(streams) > 1 else [],
            "fiscal_years": sorted(fiscal_years, reverse=True)}


def parse_sync_form(connection, form):
    """(mode, params, streams) from the Sync now form, or ValueError with what to fix."""
    options = sync_options(connection)
    mode = form.get("mode", "full")
    if mode not in options["modes"]:
        raise ValueError(f"mode must be one of {', '.join(options['modes'])}")
    params = {}
    if mode == "range":
        since, until = form.get("since", "").strip(), form.get("until", "").strip()
        for label, value in (("from", since), ("to", until)):
            if value and not _DATE.match(value):
                raise ValueError(f"the '{label}' date must look like 2026-01-31")
        if not (since or until):
            raise ValueError("a date range needs a 'from' or a 'to' date")
        if since and until and since >= until:
            raise ValueError("the 'from' date must be before the 'to' date")
        params.update({k: v for k, v in (("since", since), ("until", until)) if v})
    if options["fiscal_years"]:
        year = form.get("fiscal_year", "")
        if year not in options["fiscal_years"]:
            raise ValueError(f"fiscal year must be one of {', '.join(options['fiscal_years'])}")
        params["fiscal_year"] = int(year) if year.isdigit() else year
    streams = [s for s in form.getlist("streams") if s in options["streams"]]
    return mode, params, streams


def connection_rows():
    connections = db.session.execute(select(Connection).order_by(Connection.name)).scalars().all()
    # The last run that started (a waiting one is shown as the active sync or as "Then").
    last_ids = select(func.max(Run.id)).where(Run.mode != "record", Run.status != WAITING).group_by(Run.connection_id)
    last_runs = {run.connection_id: run for run in
                 db.session.execute(select(Run).where(Run.id.in_(last_ids))).scalars()}
    active, waiting = {}, {}
    for run in db.session.execute(select(Run).where(Run.status.in_(ACTIVE_STATUSES), Run.mode != "record")
                                  .order_by(Run.id)).scalars():
        # The active sync (a deferred run holds that place too); follow-ups are counted apart.
        if run.status == WAITING and run.not_before is None:
            waiting.setdefault(run.connection_id, []).append(run)
        else:
            active[run.connection_id] = run
    issues = {}
    for issue in connection_issues.open_issues():
        issues.setdefault(issue.connection_id, []).append(issue)
    ages = connection_issues.data_ages()
    return [{"connection": c, "last_run": last_runs.get(c.id), "active_run": active.get(c.id),
             "pause": connection_issues.describe_pause(c), "issues": issues.get(c.id, []),
             "data_age": ages.get(c.id), "freshness_target": connection_issues.freshness_target(c.settings),
             "freshness": connection_issues.freshness_level(ages.get(c.id), connection_issues.freshness_target(c.settings)),
             "follow_ups": waiting.get(c.id, []),
             "options": sync_options(c), "schedule": _describe(c.schedule),
             "triggers": trigger_policy.describe(c.settings, c.manual_only),
             "manual_allowed": "manual" in c.allowed_triggers} for c in connections]


def _describe(text):
    try:
        return parse(text).describe()
    except ScheduleError as exc:
        return f"unreadable ({exc}); treated as manual"


@bp.route("/")
def dashboard():
    return render_template("admin/dashboard.html", rows=connection_rows(), issue_labels=connection_issues.LABELS)


@bp.route("/connections/<int:connection_id>/sync", methods=["POST"])
def sync_now(connection_id):
    connection = db.get_or_404(Connection, connection_id)
    try:
        mode, params, streams = parse_sync_form(connection, request.form)
        result = runs.trigger(connection, mode=mode, params=params, streams=streams, trigger="manual",
                              requested_by=current_user.email)
    except (ValueError, ConfigError) as exc:
        flash(f"{connection.name}: {exc}", "error")
        return redirect(url_for("admin.dashboard"))
    if result.outcome == "follow_up":
        flash(f"{connection.name} is busy with run {result.active.id}: run {result.run.id} waits and starts when "
              "it ends.", "info")
    elif not result.created:
        flash(f"{connection.name} already has run {result.run.id} {result.run.status} for this sync: showing it "
              "instead of starting another.", "info")
    return redirect(url_for("admin.run_page", run_id=result.run.id))
