"""What every API module shares: JSON errors with a stable code, body and id parsing,
connection lookup, keyset pagination. Errors look like {"error": code, "reason": text}."""
from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from .blueprint import bp

# Row ids are 32-bit integers in PostgreSQL: a bigger number can only be "not found".
MAX_ID = 2**31 - 1
DEFAULT_LIMIT, MAX_LIMIT = 50, 200


class ApiError(Exception):
    def __init__(self, status, code, reason, headers=None):
        super().__init__(reason)
        self.status, self.code, self.reason, self.headers = status, code, reason, headers or {}


def error_response(status, code, reason, headers=None):
    response = jsonify(error=code, reason=reason)
    response.status_code = status
    response.headers.update(headers or {})
    return response


@bp.errorhandler(ApiError)
def _api_error(exc):
    return error_response(exc.status, exc.code, exc.reason, exc.headers)


@bp.errorhandler(HTTPException)
def _http_error(exc):
    code = (exc.name or "error").lower().replace(" ", "_")
    # Keep what the exception says beyond its body: a 405 must name the allowed methods
    # (Allow, RFC 9110 section 15.5.6).
    kept = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    return error_response(exc.code or 500, code, exc.description or exc.name, kept)


@bp.app_errorhandler(HTTPException)
def _routing_error(exc):
    # Routing errors (no such URL, wrong method) happen before a blueprint is chosen, so the
    # handler above never sees them. Under /api/ they are JSON too; elsewhere, untouched.
    if request.path.startswith(bp.url_prefix + "/"):
        return _http_error(exc)
    return exc


@bp.before_request
def _refuse_nul():
    # PostgreSQL text cannot hold NUL: refuse it at the door in the path and the query
    # string (the document's NO_NUL pattern says so) rather than let a lookup fail deep
    # inside with a 500. Bodies are checked field by field where a string meets a text
    # column (outbox type, key): inside free-form JSON (params, data, payload) a NUL is
    # only an escape in a json column, and refusing it there broke the document's word.
    if "\x00" in request.path:
        raise ApiError(404, "not_found", "no such resource (NUL in the path)")
    if any("\x00" in k or "\x00" in v for k, v in request.args.items(multi=True)):
        raise ApiError(400, "bad_request", "NUL characters are not allowed")


@bp.url_value_preprocessor
def _bound_ids(endpoint, values):
    # <int:...> accepts any size; ids are 32-bit, so a bigger one is simply not there
    # (and must not reach SQL, where it overflows).
    for name, value in (values or {}).items():
        if isinstance(value, int) and not 0 <= value <= MAX_ID:
            raise ApiError(404, "not_found", f"no {name} {value}")


def json_body():
    """The request's JSON object; {} when there is no body. 400 for anything else."""
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object (Content-Type: application/json)")
    return body


def parse_id(value, what="run"):
    text = str(value)
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        raise ApiError(404, "not_found", f"no {what} {value!r}")
    return int(text)


def find_connection(key):
    """A connection by id or name, or ApiError 404 (never a database error on odd input)."""
    from ..runs import get_connection

    text = str(key)
    # get_connection reads any isdigit() text as an id: "²" or 2**40 must not reach int() or SQL.
    if "\x00" in text or len(text) > 100 or (text.isdigit() and (not text.isascii() or int(text) > MAX_ID)):
        raise ApiError(404, "not_found", f"no connection {key!r}")
    try:
        return get_connection(text)
    except LookupError:
        raise ApiError(404, "not_found", f"no connection {key!r}") from None


def page_args():
    """?limit=1..200 and ?cursor=<id>: keyset pagination. Any id from 0 to MAX_ID is a
    valid cursor (CURSOR below documents exactly that), not only one we returned."""
    limit = request.args.get("limit", str(DEFAULT_LIMIT))
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_LIMIT:
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to {MAX_LIMIT}")
    cursor = request.args.get("cursor")
    if cursor is not None and (not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_ID):
        raise ApiError(400, "bad_request", f"cursor must be an integer from 0 to {MAX_ID} (a next_cursor)")
    return int(limit), (int(cursor) if cursor is not None else None)


def choice(name, allowed):
    value = request.args.get(name)
    if value is not None and value not in allowed:
        raise ApiError(400, "bad_request", f"{name} must be one of {', '.join(allowed)}")
    return value


# Shared OpenAPI pieces, referenced by every module's OPENAPI_PATHS.
# Text that reaches a lookup or a text column: no NUL (refused with 400, see _refuse_nul).
NO_NUL = "^[^\\x00]*$"
# ... and not blank either (what the outbox requires of an event's type and key: str.strip()).
# Python's whitespace spelled out: a pattern's \s means less to other regex dialects
# (\x1c-\x1f and \x85 are whitespace only to Python), and generators read it their way.
_SPACE = "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace())
NOT_BLANK = f"^[^\\x00]*[^\\x00{_SPACE}][^\\x00]*$"
CURSOR = {"name": "cursor", "in": "query", "description": "next_cursor of the previous page (any row id is accepted)",
          "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID}}
ERROR_RESPONSE = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def responses(ok_status, ok_schema, *errors, description="OK"):
    out = {str(ok_status): {"description": description,
                            "content": {"application/json": {"schema": ok_schema}}}}
    for status, text in errors:
        out[str(status)] = dict(ERROR_RESPONSE, description=text)
    return out


UNAUTHORIZED = (401, "missing or invalid credentials")
NOT_FOUND = (404, "not found")
BAD_REQUEST = (400, "invalid input")
TOKEN = [{"bearerToken": []}]
