"""API tokens and the cron/trigger shared secret."""
import functools
import hashlib
import hmac
import secrets

import redis
from flask import current_app, jsonify, request
from sqlalchemy import select, update

from .. import redis_keys
from ..extensions import db, redis_ext
from ..models import ApiToken, utcnow


def hash_token(token):
    return hashlib.sha256(token.encode()).hexdigest()


def token_name(text):
    """The name as stored, or ValueError: the CLI and the admin page accept the same names."""
    name = (text or "").strip()
    if not name or len(name) > 100:
        raise ValueError("a name of 1 to 100 characters is required")
    return name


def create_token(name):
    """Returns the plain token, which is shown once; only its hash is stored."""
    token = "shk_" + secrets.token_urlsafe(32)
    db.session.add(ApiToken(name=name, token_hash=hash_token(token)))
    db.session.commit()
    return token


def revoke_token(token_id):
    """True if this call revoked it; False if there is no such token or it was already revoked.
    Conditional, so two revokes at once report one success and keep the first time."""
    result = db.session.execute(update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                                .values(revoked_at=utcnow()))
    db.session.commit()
    return result.rowcount == 1


def _bearer():
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_is_valid(token):
    if not token:
        return False
    digest = hash_token(token)
    row = db.session.execute(select(ApiToken.id).where(ApiToken.token_hash == digest,
                                                       ApiToken.revoked_at.is_(None))).first()
    if row is None:
        return False
    db.session.execute(update(ApiToken).where(ApiToken.id == row[0]).values(last_used_at=utcnow()))
    db.session.commit()
    return True


def require_token(view):
    """Bearer token from `flask tokens create`. 401 JSON otherwise; 429 for a client that
    has sent too many wrong ones."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        supplied = _bearer()
        braked = _braked()
        if braked is not None:
            return braked
        if not token_is_valid(supplied):
            _count_failure(supplied)
            return jsonify(error="unauthorized", reason="a valid API token is required: Authorization: Bearer <token>"), 401
        return view(*args, **kwargs)

    return wrapped


# -- the brake on guessing ----------------------------------------------------------------
# Tokens are 256 random bits, so guessing one is hopeless; the brake is there so that a
# client that tries anyway (or a script with a revoked token in a loop) costs a Redis
# lookup, not a database query, and shows up as 429s. It counts per client address (the
# real one behind proxies listed in SYNCHUB_TRUSTED_PROXIES), so other clients go on.
def _failures_key():
    return redis_keys.key("api-auth-failures", request.remote_addr or "unknown")


def _braked():
    """The 429 answer for a client over the limit, else None. Without Redis, no brake."""
    client = redis_ext.optional()
    if client is None:
        return None
    try:
        failures, ttl = client.pipeline().get(_failures_key()).ttl(_failures_key()).execute()
    except redis.RedisError:
        return None
    if int(failures or 0) < current_app.config["API_MAX_AUTH_FAILURES"]:
        return None
    wait = max(1, ttl if ttl and ttl > 0 else current_app.config["API_AUTH_BRAKE_SECONDS"])
    response = jsonify(error="too_many_requests",
                       reason=f"too many requests with wrong credentials from your address; try again in {wait} s")
    response.status_code = 429
    response.headers["Retry-After"] = str(wait)
    return response


def _count_failure(supplied):
    if not supplied:
        return  # no credentials at all is a mistake, not a guess
    client = redis_ext.optional()
    if client is None:
        return
    try:
        if client.incr(_failures_key()) == 1:  # the window starts at the first failure
            client.expire(_failures_key(), current_app.config["API_AUTH_BRAKE_SECONDS"])
    except redis.RedisError:
        pass


def cron_secret_matches(supplied):
    expected = current_app.config.get("CRON_SECRET")
    if not expected or not supplied:
        return False
    return hmac.compare_digest(supplied.encode(), expected.encode())


def require_cron_secret(view):
    """Cron and trigger endpoints: X-Cron-Secret header (or a bearer token equal to the secret),
    compared in constant time. Refused outright when SYNCHUB_CRON_SECRET is unset."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        supplied = request.headers.get("X-Cron-Secret") or _bearer()
        braked = _braked()
        if braked is not None:
            return braked
        if not cron_secret_matches(supplied):
            _count_failure(supplied)
            return jsonify(error="unauthorized", reason="missing or wrong cron secret (X-Cron-Secret)"), 401
        return view(*args, **kwargs)

    return wrapped
