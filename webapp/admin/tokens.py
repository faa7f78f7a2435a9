"""API tokens: list, create, revoke. The same functions as `flask tokens`.

A new token is shown in the response to the POST that created it and nowhere else: it is
not flashed (the session cookie is signed, not encrypted), not redirected to, not logged,
and only its hash is stored, so no later page could show it even by mistake."""
from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from ..api.auth import create_token, hash_token, revoke_token, token_name
from ..extensions import db
from ..models import ApiToken
from .blueprint import bp


def _page(status=200, **context):
    rows = db.session.execute(select(ApiToken).order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())
                              ).scalars().all()
    return render_template("admin/tokens.html", tokens=rows, **context), status


@bp.route("/tokens")
def tokens():
    return _page()


@bp.route("/tokens", methods=["POST"])
def token_create():
    try:
        name = token_name(request.form.get("name"))
    except ValueError as exc:
        flash(str(exc), "error")
        return _page(400, name=request.form.get("name", ""))
    token = create_token(name)
    created = db.session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).scalar_one()
    current_app.logger.info("API token %s created by %s", created.id, current_user.email)
    return _page(new_token=token, created=created)


@bp.route("/tokens/<int:token_id>/revoke", methods=["POST"])
def token_revoke(token_id):
    row = db.session.get(ApiToken, token_id)
    if row is None:
        flash(f"There is no API token {token_id}.", "error")
    elif revoke_token(token_id):
        current_app.logger.info("API token %s revoked by %s", token_id, current_user.email)
        flash(f"Token {row.name} revoked: requests with it are refused from now on.", "info")
    else:
        flash(f"Token {row.name} was already revoked.", "info")
    return redirect(url_for("admin.tokens"))
