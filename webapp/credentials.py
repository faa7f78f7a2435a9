"""Connection credentials, encrypted at rest with Fernet.

Keys come from SYNCHUB_ENCRYPTION_KEYS (comma-separated, newest first: MultiFernet
encrypts with the first and decrypts with any, which is what makes rotation possible).
On a fresh machine a key is generated into instance/encryption.key with a warning.
"""
import json
import logging
import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app

from .connectors.errors import ConfigError
from .logs import register_secrets

log = logging.getLogger(__name__)
_KEY_FILE = "encryption.key"


def _load_keys(app):
    configured = app.config.get("SYNCHUB_ENCRYPTION_KEYS")
    if configured:
        return [k.strip() for k in configured.split(",") if k.strip()]
    path = os.path.join(app.config["INSTANCE_PATH"], _KEY_FILE)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # O_EXCL: when web, worker and supervisor start together, exactly one writes the key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(Fernet.generate_key().decode() + "\n")
            log.warning(
                "SYNCHUB_ENCRYPTION_KEYS is unset: generated a credential encryption key in %s. "
                "Back it up, or set SYNCHUB_ENCRYPTION_KEYS in production.",
                path,
            )
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _fernet():
    app = current_app._get_current_object()
    cached = app.extensions.get("synchub_fernet")
    if cached is None:
        try:
            cached = MultiFernet([Fernet(k.encode()) for k in _load_keys(app)])
        except (ValueError, TypeError):
            raise ConfigError(
                "SYNCHUB_ENCRYPTION_KEYS holds an invalid key: each must be a urlsafe-base64 "
                "32-byte Fernet key (python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from None
        app.extensions["synchub_fernet"] = cached
    return cached


def encrypt_credentials(value):
    return _fernet().encrypt(json.dumps(value).encode()).decode()


def decrypt_credentials(token):
    if not token:
        return {}
    try:
        value = json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise ConfigError(
            "stored credentials cannot be decrypted with the configured keys: "
            "add the old key to SYNCHUB_ENCRYPTION_KEYS (after the new one)"
        ) from None
    register_secrets(value)  # from now on this process masks them in every log line
    return value


def rotate_token(token):
    """Re-encrypt under the newest key. Idempotent, so an interrupted rotation can re-run."""
    return _fernet().rotate(token.encode()).decode()
