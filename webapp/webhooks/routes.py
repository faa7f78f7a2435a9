"""POST /webhooks/<connection id or name>: the provider-facing endpoint."""
from flask import Blueprint, current_app, jsonify, request

from . import ingest

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/<connection_key>")
def receive(connection_key):
    limit = current_app.config.get("WEBHOOK_MAX_BYTES", 1024 * 1024)
    if request.content_length is not None and request.content_length > limit:
        return _answer(ingest.reject(413, "too_large", f"the body is over the {limit}-byte limit", connection_key))
    raw = request.stream.read(limit + 1)  # bounded even when no Content-Length was sent
    if len(raw) > limit:
        return _answer(ingest.reject(413, "too_large", f"the body is over the {limit}-byte limit", connection_key))
    # Signatures are checked over these exact bytes; the body is parsed only after that.
    return _answer(ingest.receive(connection_key, raw, request.headers, request.content_type))


def _answer(answer):
    response = jsonify(answer.body)
    response.status_code = answer.status
    response.headers.update(answer.headers)
    return response
