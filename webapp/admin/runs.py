"""The run page (live progress, activity log, record errors, Cancel) and the history."""
from datetime import datetime, timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from .. import runs
from ..extensions import db
from ..run_view import activity, record_errors, run_state
from ..models import ACTIVE_STATUSES, STATUSES, TRIGGERS, Connection, Run
from .blueprint import bp

PAGE_SIZE = 50


@bp.route("/runs/<int:run_id>")
def run_page(run_id):
    run = db.get_or_404(Run, run_id)
    state = run_state(run)
    errors, error_count = record_errors(run_id)
    return render_template("admin/run.html", run=run, state=state, log=activity(run_id, state),
                           errors=errors, error_count=error_count, active=run.status in ACTIVE_STATUSES)


@bp.route("/runs/<int:run_id>/cancel", methods=["POST"])
def run_cancel(run_id):
    db.get_or_404(Run, run_id)
    status = runs.cancel(run_id, requested_by=current_user.email)
    if status == "cancelled":
        flash(f"Run {run_id} cancelled.", "info")
    elif status == "running":
        flash(f"Run {run_id} will stop at the next page boundary.", "info")
    else:
        flash(f"Run {run_id} had already ended ({status}).", "info")
    return redirect(url_for("admin.run_page", run_id=run_id))


def _date(value, name):
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        abort(400, description=f"{name} must be a date like 2026-01-31")


@bp.route("/runs")
def history():
    args = request.args
    query = select(Run).order_by(Run.id.desc())
    filters = {}
    connection_id = args.get("connection", "")
    if connection_id.isdigit():
        query = query.where(Run.connection_id == int(connection_id))
        filters["connection"] = connection_id
    if args.get("status") in STATUSES:
        query = query.where(Run.status == args["status"])
        filters["status"] = args["status"]
    if args.get("trigger") in TRIGGERS:
        query = query.where(Run.trigger == args["trigger"])
        filters["trigger"] = args["trigger"]
    since, until = _date(args.get("since"), "from"), _date(args.get("until"), "to")
    if since:
        query = query.where(Run.created_at >= since)
        filters["since"] = args["since"]
    if until:  # the whole 'to' day is included
        query = query.where(Run.created_at < until + timedelta(days=1))
        filters["until"] = args["until"]
    page = db.paginate(query, page=args.get("page", 1, type=int), per_page=PAGE_SIZE, error_out=False)
    connections = db.session.execute(select(Connection.id, Connection.name).order_by(Connection.name)).all()
    return render_template("admin/history.html", page=page, filters=filters, connections=connections,
                           statuses=STATUSES, triggers=TRIGGERS)
