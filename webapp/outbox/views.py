"""The admin outbox page (docs/OUTBOX.md, "Admin"): counts by status, pending and dead
events with their last error, filters by status, type and key, and Retry / Discard for
one event, the selected ones, or every event the filter matches. Nested in the admin
blueprint: its guard gives it login and CSRF checks."""
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from ..extensions import db
from ..models import OUTBOX_STATUSES, Connection, OutboxEvent
from . import queries
from .statuses import DEAD, PENDING

# Nested in the admin blueprint (webapp/admin/__init__.py), whose guard covers it.
bp = Blueprint("outbox", __name__, url_prefix="/outbox", template_folder="templates")

PAGE_SIZE = 50
# The default view: what needs a person's attention.
ATTENTION = "pending+dead"


def _filters(source):
    status = source.get("status", ATTENTION)
    if status not in OUTBOX_STATUSES + (ATTENTION, "all"):
        status = ATTENTION
    return {"status": status, "type": (source.get("type") or "").strip(), "key": (source.get("key") or "").strip()}


def _query(columns, filters):
    query = queries.filtered(select(*columns), None, filters["type"] or None, filters["key"] or None)
    if filters["status"] == ATTENTION:
        return query.where(OutboxEvent.status.in_((PENDING, DEAD)))
    if filters["status"] != "all":
        return query.where(OutboxEvent.status == filters["status"])
    return query


@bp.get("/", endpoint="index")
def index():
    filters = _filters(request.args)
    try:
        page = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page = 1
    rows = db.session.execute(_query([OutboxEvent], filters).order_by(OutboxEvent.id.desc())
                              .limit(PAGE_SIZE + 1).offset((page - 1) * PAGE_SIZE)).scalars().all()
    types = db.session.execute(select(OutboxEvent.type).distinct().order_by(OutboxEvent.type)).scalars().all()
    names = dict(db.session.execute(select(Connection.id, Connection.name)).all())
    return render_template("outbox/index.html", counts=queries.counts(db.session), rows=rows[:PAGE_SIZE],
                           has_next=len(rows) > PAGE_SIZE, page=page, filters=filters, types=types, names=names,
                           statuses=OUTBOX_STATUSES, attention=ATTENTION)


@bp.get("/<int:event_id>", endpoint="event")
def event(event_id):
    row = db.session.get(OutboxEvent, event_id)
    if row is None:
        abort(404)
    connection = db.session.get(Connection, row.connection_id) if row.connection_id else None
    return render_template("outbox/event.html", row=row, connection=connection)


def _selected_ids():
    """The event ids a POST acts on: the checked ones, or with scope=matching every event
    the submitted filter matches."""
    if request.form.get("scope") == "matching":
        return db.session.execute(_query([OutboxEvent.id], _filters(request.form))).scalars().all()
    if request.form.get("one"):  # a row's own button: that row only, whatever is checked
        return [_event_id(request.form["one"])]
    return [_event_id(value) for value in request.form.getlist("ids")]


def _event_id(value):
    try:
        return int(value)
    except ValueError:
        abort(400, "event ids must be numbers")


def _back(allow_next=True):
    filters = _filters(request.form)
    target = request.form.get("next")
    if allow_next and target and target.startswith("/admin/outbox/") and "//" not in target:
        return redirect(target)
    return redirect(url_for("admin.outbox.index", **{k: v for k, v in filters.items() if v}))


def _skipped(count):
    return f"; {count} skipped (being delivered or done)" if count else ""


@bp.post("/retry", endpoint="retry")
def retry():
    ids = _selected_ids()
    if not ids:
        flash("No events selected.", "error")
        return _back()
    count = queries.retry(db.session, ids)
    flash(f"{count} event(s) queued for delivery{_skipped(len(ids) - count)}.", "info")
    return _back()


@bp.post("/discard", endpoint="discard")
def discard():
    ids = _selected_ids()
    if not ids:
        flash("No events selected.", "error")
        return _back()
    count = queries.discard(db.session, ids)
    flash(f"{count} event(s) discarded{_skipped(len(ids) - count)}.", "info")
    return _back(allow_next=False)  # the event's own page is gone
