"""The dashboard: every connection with its health, last run and next run, and Sync now."""
from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select

from .. import connection_issues, run_request, runs, trigger_policy
from ..connectors import load_all
from ..connectors.base import REGISTRY
from ..connectors.errors import ConfigError
from ..extensions import db
from ..models import ACTIVE_STATUSES, WAITING, Connection, Run
from ..schedules.parser import ScheduleError, parse
from .blueprint import bp

# The Sync now choice: one of these, each a run the connection can do. "fiscal_year" is a
# date-range run over one fiscal year, never combined with dates (issue: the year used to
# override the range, so an all-tickets full sync could not be started).
CHOICE_LABELS = {"incremental": "new and changed (incremental)", "range": "date range", "fiscal_year": "fiscal year"}


def sync_options(connection):
    """What the Sync now control offers for this connection."""
    load_all()
    cls = REGISTRY.get(connection.connector)
    modes = run_request.request_modes(cls) if cls else list(run_request.REQUEST_MODES)
    fiscal_years = [str(y) for y in (connection.settings or {}).get("fiscal_years") or []]
    choices = [(m, cls.full_sync_label if cls and m == "full" else CHOICE_LABELS.get(m, m)) for m in modes]
    if fiscal_years:
        choices.append(("fiscal_year", CHOICE_LABELS["fiscal_year"]))
    streams = run_request.stream_names(cls, connection.settings) if cls else []
    return {"modes": modes, "choices": choices, "streams": streams if len(streams) > 1 else [],
            "fiscal_years": sorted(fiscal_years, reverse=True)}


def parse_sync_form(connection, form):
    """The checked RunRequest of the Sync now form, or RunRequestError with what to fix."""
    choice = form.get("mode", "full")
    params = {}
    if choice == "fiscal_year":
        mode, params["fiscal_year"] = "range", form.get("fiscal_year", "")
        if not params["fiscal_year"]:
            raise run_request.RunRequestError("choose a fiscal year")
    else:
        mode = choice
    if choice == "range":
        params.update(since=form.get("since", "").strip(), until=form.get("until", "").strip())
    return run_request.check(connection, mode=mode, params=params, streams=form.getlist("streams"))


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
        wanted = parse_sync_form(connection, request.form)
        result = runs.trigger(connection, mode=wanted.mode, params=wanted.params, streams=wanted.streams,
                              trigger="manual", requested_by=current_user.email)
    except (run_request.RunRequestError, ConfigError) as exc:
        flash(f"{connection.name}: {exc}", "error")
        # Back to the form as it was filled in, so a wrong date does not reset the choice.
        kept = {k: request.form.get(k, "") for k in ("mode", "since", "until", "fiscal_year")}
        return redirect(url_for("admin.dashboard", sync=connection.id, **{k: v for k, v in kept.items() if v},
                                _anchor=f"connection-{connection.id}"))
    if result.outcome == "follow_up":
        flash(f"{connection.name} is busy with run {result.active.id}: run {result.run.id} waits and starts when "
              "it ends.", "info")
    elif not result.created:
        flash(f"{connection.name} already has run {result.run.id} {result.run.status} for this sync: showing it "
              "instead of starting another.", "info")
    return redirect(url_for("admin.run_page", run_id=result.run.id))
