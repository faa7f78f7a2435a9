"""Credentials are encrypted at rest, decryptable after key rotation, never shown."""
import logging

import pytest
from cryptography.fernet import Fernet

from tests.conftest import make_app
from webapp.connectors.errors import ConfigError
from webapp.credentials import decrypt_credentials, encrypt_credentials, rotate_token


def test_fresh_machine_generates_a_key_file_with_a_warning(tmp_path, redis_url, caplog):
    app = make_app(f"sqlite:///{tmp_path}/db.sqlite", redis_url, str(tmp_path / "instance"),
                   SYNCHUB_ENCRYPTION_KEYS=None)
    with app.app_context(), caplog.at_level(logging.WARNING):
        token = encrypt_credentials({"api_key": "k-123"})
        assert decrypt_credentials(token) == {"api_key": "k-123"}
    key_file = tmp_path / "instance" / "encryption.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert any("generated a credential encryption key" in r.message for r in caplog.records)


def test_rotation_reencrypts_under_the_new_key_and_old_tokens_still_decrypt(tmp_path, redis_url):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = make_app(f"sqlite:///{tmp_path}/a.sqlite", redis_url, str(tmp_path / "i1"), SYNCHUB_ENCRYPTION_KEYS=old)
    with before.app_context():
        token = encrypt_credentials({"token": "s3cr3t"})
    after = make_app(f"sqlite:///{tmp_path}/b.sqlite", redis_url, str(tmp_path / "i2"),
                     SYNCHUB_ENCRYPTION_KEYS=f"{new},{old}")
    with after.app_context():
        assert decrypt_credentials(token) == {"token": "s3cr3t"}
        rotated = rotate_token(token)
        assert decrypt_credentials(rotate_token(rotated)) == {"token": "s3cr3t"}  # re-running is harmless
    only_new = make_app(f"sqlite:///{tmp_path}/c.sqlite", redis_url, str(tmp_path / "i3"), SYNCHUB_ENCRYPTION_KEYS=new)
    with only_new.app_context():
        assert decrypt_credentials(rotated) == {"token": "s3cr3t"}
        with pytest.raises(ConfigError, match="cannot be decrypted") as excinfo:
            decrypt_credentials(token)
        assert "s3cr3t" not in str(excinfo.value)
