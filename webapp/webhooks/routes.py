"""POST /webhooks/<connection id or name>: the provider-facing endpoint."""
import orjson
from flask import Blueprint, current_app, request

from . import ingest

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/<connection_key>")
def receive(connection_key):
    limit = current_app.config["WEBHOOK_MAX_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        return _answer(ingest.reject(413, "too_large", f"the body is over the {limit}-byte limit", connection_key))
    raw = request.stream.read(limit + 1)  # bounded even when no Content-Length was sent
    if len(raw) > limit:
        return _answer(ingest.reject(413, "too_large", f"the body is over the {limit}-byte limit", connection_key))
    # Signatures are checked over these exact bytes; the body is parsed only after that.
    return _answer(ingest.receive(connection_key, raw, read_headers(request.environ), request.content_type))


def read_headers(environ):
    """{lower-cased name: value} of the request's headers, read straight from the WSGI
    environ: the same dict as {name.lower(): value for name, value in request.headers.items()}
    in half the time, werkzeug's EnvironHeaders mapping every environ key through its
    generic rules. A delivery's request is the web process's hot path, and this is about 1%
    of it (docs/PERFORMANCE.md, "Webhook intake as named components")."""
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")}
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            headers[name] = environ[key]
    return headers


def _answer(answer):
    # orjson rather than jsonify: the answers are small flat objects, and this is per delivery.
    return current_app.response_class(orjson.dumps(answer.body), status=answer.status, headers=answer.headers,
                                      mimetype="application/json")
