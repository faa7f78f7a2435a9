"""The admin's webhook Deliveries page: recent deliveries with their verdict,
provider event id, outcome and the runs they caused, rejection counts, and Replay.

Nested in the admin blueprint (webapp/admin/__init__.py), whose guard gives it login and
CSRF checks. It renders inside the admin's base template."""
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from ..extensions import db
from ..models import Connection, Run, WebhookDelivery
from . import dispatch, ingest

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks", template_folder="templates")

PAGE_SIZE = 50
OUTCOMES = (dispatch.RECEIVED, dispatch.ENQUEUED, dispatch.IGNORED, dispatch.FAILED)
BODY_PREVIEW_BYTES = 4096



@bp.get("/")
def deliveries():
    args = request.args
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc())
    filters = {}
    if args.get("connection", "").isdigit():
        query = query.where(WebhookDelivery.connection_id == int(args["connection"]))
        filters["connection"] = args["connection"]
    if args.get("outcome") in OUTCOMES:
        query = query.where(WebhookDelivery.outcome == args["outcome"])
        filters["outcome"] = args["outcome"]
    page = db.paginate(query, page=args.get("page", 1, type=int), per_page=PAGE_SIZE, error_out=False)
    run_ids = {run_id for d in page.items for run_id in (d.run_ids or [])}
    statuses = dict(db.session.execute(select(Run.id, Run.status).where(Run.id.in_(run_ids))).all()) if run_ids else {}
    connections = db.session.execute(select(Connection.id, Connection.name).order_by(Connection.name)).all()
    return render_template("webhooks/deliveries.html", page=page, filters=filters, outcomes=OUTCOMES,
                           connections=connections, names=dict(connections), statuses=statuses,
                           rejected=sorted(ingest.rejected_counts().items()), preview=_preview)


@bp.post("/<int:delivery_id>/replay")
def replay(delivery_id):
    try:
        run_ids = dispatch.replay(delivery_id, requested_by=current_user.email)
    except LookupError:
        flash(f"No webhook delivery {delivery_id}.", "error")
    except ValueError:
        flash(f"Delivery {delivery_id} could not be replayed: its stored body is not JSON.", "error")
    else:
        delivery = db.session.get(WebhookDelivery, delivery_id)
        if run_ids:
            flash(f"Delivery {delivery_id} replayed: run(s) {', '.join(f'#{i}' for i in run_ids)} queued.", "info")
        else:
            flash(f"Delivery {delivery_id} replayed: nothing to sync ({delivery.outcome}"
                  + (f": {delivery.error}" if delivery.error else "") + ").", "info")
    return redirect(url_for("admin.webhooks.deliveries", **{k: v for k, v in request.args.items() if k in ("page", "connection", "outcome")}))


def _preview(raw):
    text = bytes(raw or b"")[:BODY_PREVIEW_BYTES].decode("utf-8", errors="replace")
    return text + (" …" if raw and len(raw) > BODY_PREVIEW_BYTES else "")
