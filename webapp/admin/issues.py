"""The issues page: what is wrong with each connection, by cause, open first
(webapp/connection_issues.py)."""
from flask import render_template, request
from sqlalchemy import select

from .. import connection_issues
from ..extensions import db
from ..models import Connection, ConnectionIssue
from .blueprint import bp

RESOLVED_SHOWN = 50


@bp.route("/issues")
def issues():
    connection_id = request.args.get("connection", type=int)
    resolved = select(ConnectionIssue).where(ConnectionIssue.resolved_at.is_not(None))
    if connection_id is not None:
        resolved = resolved.where(ConnectionIssue.connection_id == connection_id)
    resolved = db.session.execute(resolved.order_by(ConnectionIssue.resolved_at.desc())
                                  .limit(RESOLVED_SHOWN)).scalars().all()
    paused = db.session.execute(select(Connection).where(Connection.paused_at.is_not(None))
                                .order_by(Connection.name)).scalars().all()
    return render_template("admin/issues.html", open_issues=connection_issues.open_issues(connection_id),
                           resolved=resolved, labels=connection_issues.LABELS,
                           paused=[(c, connection_issues.describe_pause(c)) for c in paused],
                           connection=db.session.get(Connection, connection_id) if connection_id else None)
