"""Known-answer signers written from the providers' documentation with hmac, base64 and
cryptography: independent of webapp.webhooks.signatures, which they check."""
import base64
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime, timezone

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

JSON = "application/json"


def whsec():
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def standard_headers(body, secret, msg_id=None, timestamp=None, extra_signatures=()):
    msg_id = msg_id or "msg_" + secrets.token_hex(8)
    timestamp = str(int(time.time()) if timestamp is None else int(timestamp))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    signature = " ".join(list(extra_signatures) + ["v1," + base64.b64encode(digest).decode()])
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature,
            "Content-Type": JSON}


def zoom_headers(body, secret, timestamp=None):
    timestamp = str(int(time.time()) if timestamp is None else int(timestamp))
    digest = hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"x-zm-request-timestamp": timestamp, "x-zm-signature": "v0=" + digest, "Content-Type": JSON}


def ed25519_keypair():
    private = ed25519.Ed25519PrivateKey.generate()
    return private, _pem(private.public_key())


def rsa_keypair():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return private, _pem(private.public_key())


def _pem(public):
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def ghl_headers(body, private):
    return {"x-ghl-signature": base64.b64encode(private.sign(body)).decode(), "Content-Type": JSON}


def wh_headers(body, private):
    signature = private.sign(body, padding.PKCS1v15(), hashes.SHA256())
    return {"x-wh-signature": base64.b64encode(signature).decode(), "Content-Type": JSON}


def basic_headers(username, password):
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": JSON}


def iso(epoch):
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def dumps(value):
    """Compact JSON as a provider sends it; tests re-serialise it with other spacing."""
    return json.dumps(value, separators=(",", ":")).encode()


def flip_one_byte(body):
    index = len(body) // 2
    return body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1:]
