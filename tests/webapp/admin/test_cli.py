"""`flask secrets rotate`: every credential re-encrypted under the newest key, safely re-runnable."""
from cryptography.fernet import Fernet

from tests.support import TEST_KEY


def _use_keys(app, *keys):
    app.config["SYNCHUB_ENCRYPTION_KEYS"] = ",".join(keys)
    app.extensions.pop("synchub_fernet", None)  # the MultiFernet is cached per app


def _credentials(app):
    from webapp.extensions import db
    from webapp.models import Connection

    db.session.expire_all()
    return {c.name: c.credentials for c in Connection.query.order_by(Connection.name)}


def test_rotate_reencrypts_every_credential_under_the_new_key(app, make_connection):
    from webapp.credentials import rotate_token
    from webapp.extensions import db
    from webapp.models import Connection

    make_connection(name="a", credentials={"api_key": "secret-a"})
    make_connection(name="b", credentials={"token": "secret-b"})
    make_connection(name="none")
    new_key = Fernet.generate_key().decode()
    _use_keys(app, new_key, TEST_KEY)
    # An earlier rotation was interrupted after the first row: re-running finishes the job.
    first = Connection.query.filter_by(name="a").one()
    first.credentials_encrypted = rotate_token(first.credentials_encrypted)
    db.session.commit()

    result = app.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0, result.output
    assert "2 connection(s)" in result.output and "secret" not in result.output

    _use_keys(app, new_key)  # the old key is gone: everything must still decrypt
    expected = {"a": {"api_key": "secret-a"}, "b": {"token": "secret-b"}, "none": {}}
    assert _credentials(app) == expected
    result = app.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code == 0 and "2 connection(s)" in result.output
    assert _credentials(app) == expected


def test_rotate_names_rows_no_key_can_read_and_still_rotates_the_rest(app, make_connection):
    from webapp.extensions import db

    good = make_connection(name="good", credentials={"api_key": "secret-good"})
    stray = make_connection(name="stray")
    stray.credentials_encrypted = Fernet(Fernet.generate_key()).encrypt(b'{"api_key": "secret-stray"}').decode()
    db.session.commit()
    new_key = Fernet.generate_key().decode()
    _use_keys(app, new_key, TEST_KEY)
    result = app.test_cli_runner().invoke(args=["secrets", "rotate"])
    assert result.exit_code == 1
    assert f"connection(s) {stray.id}: credentials match none of the configured keys" in result.output
    assert "secret-stray" not in result.output
    _use_keys(app, new_key)
    db.session.expire_all()
    assert db.session.get(type(good), good.id).credentials == {"api_key": "secret-good"}
