"""Inbound webhook signature schemes (PROVIDERS.md). Plain functions over the RAW body bytes:
nothing here parses the body before its signature holds, and every comparison of secret
material is constant-time.

Each verify_* raises SignatureError (HTTP 401 with a stable code) or returns normally.
`SCHEMES` maps the name a connector declares in `webhook_scheme` to a function that takes
what it needs from the connection's settings and credentials:

    standard   credentials["webhook_secret"]          "whsec_<base64>" (Standard Webhooks)
    zoom       credentials["webhook_secret_token"]    Zoom's secret token
    highlevel  settings["webhook_public_key"]         PEM, Ed25519 (x-ghl-signature)
               settings["webhook_legacy_public_key"]  PEM, RSA (x-wh-signature, legacy)
    halopsa    credentials["webhook_username"], credentials["webhook_password"]  (Basic auth)
"""
import base64
import binascii
import hashlib
import hmac
import json
import time
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

TOLERANCE_SECONDS = 300  # ±5 minutes, both directions


class SignatureError(Exception):
    """The request is not provably from the provider. Always answered 401."""

    status = 401

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _header(headers, name):
    value = headers.get(name)
    return value.strip() if value else None


def check_timestamp(timestamp, now=None, tolerance=TOLERANCE_SECONDS):
    """Seconds since the epoch (int or digit string). Stale or future beyond tolerance → 401."""
    try:
        value = int(str(timestamp).strip())
    except (TypeError, ValueError):
        raise SignatureError("bad_timestamp", "the timestamp header is not an integer") from None
    now = time.time() if now is None else now
    if abs(now - value) > tolerance:
        raise SignatureError("stale_timestamp", f"timestamp is outside the ±{tolerance}s tolerance")
    return value


# -- Standard Webhooks ---------------------------------------------------------------------


def standard_secret_bytes(secret):
    """The HMAC key of a "whsec_<base64>" secret (a bare base64 string is accepted too)."""
    if not secret:
        raise SignatureError("not_configured", "no webhook secret is configured for this connection")
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("not_configured", "the configured webhook secret is not valid base64") from None


def verify_standard(body, headers, secret, now=None, tolerance=TOLERANCE_SECONDS):
    """webhook-id, webhook-timestamp, webhook-signature ("v1,<base64>" entries separated by
    spaces; any one may match, for key rotation). Returns the webhook id."""
    msg_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise SignatureError("missing_signature", "webhook-id, webhook-timestamp and webhook-signature headers are required")
    key = standard_secret_bytes(secret)
    check_timestamp(timestamp, now, tolerance)
    expected = base64.b64encode(
        hmac.new(key, msg_id.encode() + b"." + timestamp.encode() + b"." + body, hashlib.sha256).digest())
    matched = False
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        # Evaluate every entry (no early exit) so timing says nothing about which one matched.
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            matched = True
    if not matched:
        raise SignatureError("bad_signature", "no v1 signature matches the body")
    return msg_id


# -- Zoom ----------------------------------------------------------------------------------


def zoom_signature(body, timestamp, secret):
    message = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_zoom(body, headers, secret, now=None, tolerance=TOLERANCE_SECONDS):
    """x-zm-signature = "v0=" + hex HMAC-SHA256(secret, "v0:{x-zm-request-timestamp}:{body}")."""
    signature = _header(headers, "x-zm-signature")
    timestamp = _header(headers, "x-zm-request-timestamp")
    if not (signature and timestamp):
        raise SignatureError("missing_signature", "x-zm-signature and x-zm-request-timestamp headers are required")
    if not secret:
        raise SignatureError("not_configured", "no Zoom webhook secret token is configured for this connection")
    check_timestamp(timestamp, now, tolerance)
    if not hmac.compare_digest(signature.encode(), zoom_signature(body, timestamp, secret).encode()):
        raise SignatureError("bad_signature", "x-zm-signature does not match the body")


def zoom_url_validation_response(plain_token, secret):
    """Zoom's endpoint.url_validation challenge: echo the token with its HMAC."""
    encrypted = hmac.new(secret.encode(), str(plain_token).encode(), hashlib.sha256).hexdigest()
    return {"plainToken": plain_token, "encryptedToken": encrypted}


# -- HighLevel -----------------------------------------------------------------------------


def _public_key(pem, kind):
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except (ValueError, TypeError):
        raise SignatureError("not_configured", "the configured webhook public key is not a valid PEM public key") from None
    if not isinstance(key, kind):
        raise SignatureError("not_configured", f"the configured webhook public key is not an {kind.__name__.split('PublicKey')[0]} key")
    return key


def _b64(value):
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("bad_signature", "the signature is not valid base64") from None


def verify_highlevel(body, headers, public_key_pem=None, legacy_public_key_pem=None):
    """x-ghl-signature (Ed25519, base64) is preferred; legacy x-wh-signature is RSA-SHA256
    PKCS#1 v1.5 (base64). Both over the raw body, against public keys from the settings."""
    ghl = _header(headers, "x-ghl-signature")
    legacy = _header(headers, "x-wh-signature")
    if not (ghl or legacy):
        raise SignatureError("missing_signature", "x-ghl-signature (or legacy x-wh-signature) header is required")
    try:
        if ghl:
            if not public_key_pem:
                raise SignatureError("not_configured", "no HighLevel Ed25519 public key is configured for this connection")
            _public_key(public_key_pem, ed25519.Ed25519PublicKey).verify(_b64(ghl), body)
        else:
            pem = legacy_public_key_pem or public_key_pem
            if not pem:
                raise SignatureError("not_configured", "no HighLevel RSA public key is configured for this connection")
            _public_key(pem, rsa.RSAPublicKey).verify(_b64(legacy), body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("bad_signature", "the HighLevel signature does not match the body") from None


def check_highlevel_timestamp(body, now=None, tolerance=TOLERANCE_SECONDS):
    """Replay guard, once the signature holds: the body's ISO `timestamp` must be recent.
    A body that is not JSON is left for the caller to reject as malformed (400)."""
    try:
        stamp = json.loads(body).get("timestamp")
    except (ValueError, AttributeError):
        return
    if stamp is None:
        return  # the signature still proves origin; replays are deduplicated by webhookId
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise SignatureError("bad_timestamp", "the body's timestamp is not an ISO 8601 date") from None
    if when.tzinfo is None:
        raise SignatureError("bad_timestamp", "the body's timestamp has no time zone")
    check_timestamp(int(when.timestamp()), now, tolerance)


# -- HaloPSA -------------------------------------------------------------------------------


def verify_basic_auth(headers, username, password):
    """HaloPSA webhooks carry Basic-auth credentials, no HMAC."""
    if not (username and password):
        raise SignatureError("not_configured", "no webhook username and password are configured for this connection")
    scheme, _, value = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise SignatureError("missing_signature", "Basic authorization is required")
    try:
        supplied = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("bad_signature", "the Basic authorization is not valid base64") from None
    expected = f"{username}:{password}".encode()
    if not hmac.compare_digest(supplied, expected):
        raise SignatureError("bad_signature", "wrong webhook username or password")


# -- by scheme name --------------------------------------------------------------------------


def _standard(body, headers, settings, credentials, now):
    verify_standard(body, headers, credentials.get("webhook_secret"), now)


def _zoom(body, headers, settings, credentials, now):
    verify_zoom(body, headers, credentials.get("webhook_secret_token"), now)


def _highlevel(body, headers, settings, credentials, now):
    verify_highlevel(body, headers, settings.get("webhook_public_key"), settings.get("webhook_legacy_public_key"))
    check_highlevel_timestamp(body, now)


def _halopsa(body, headers, settings, credentials, now):
    verify_basic_auth(headers, credentials.get("webhook_username"), credentials.get("webhook_password"))


SCHEMES = {"standard": _standard, "zoom": _zoom, "highlevel": _highlevel, "halopsa": _halopsa}


def verify(scheme, body, headers, settings, credentials, now=None):
    """Raise SignatureError unless the body is signed for this scheme. `headers` maps
    lower-case header names to values (webhooks/routes.py builds it)."""
    try:
        check = SCHEMES[scheme]
    except KeyError:
        raise SignatureError("not_configured", f"unknown webhook signature scheme {scheme!r}") from None
    check(body, headers, settings or {}, credentials or {}, now)
