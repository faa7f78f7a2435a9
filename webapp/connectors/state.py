"""Persisting what a provider changes under a connector: rotated OAuth tokens, a fiscal
year the app announced. Used through Services.update_credentials / update_settings.

One short transaction of its own, on its own database connection, committed before
returning, so the change survives whatever happens to the run's page transaction next.
The connection row is locked first (an UPDATE that changes nothing: a row lock on
PostgreSQL, the write lock on SQLite), so concurrent read-modify-writes of the same
connection — two workers renewing one rotating refresh token — take turns, and the
second one sees what the first stored.
"""
import contextlib

from flask import has_app_context
from sqlalchemy import select, update

from .errors import ConfigError

FIELDS = ("credentials", "settings")


def update_connection(services, field, mutate):
    if field not in FIELDS:
        raise ValueError(field)
    if services.connection_id is None:
        raise ConfigError("this connector needs a stored connection to save its state")
    with _app_context(services.app):
        return _update(services.connection_id, field, mutate)


def _update(connection_id, field, mutate):
    from webapp.credentials import decrypt_credentials, encrypt_credentials
    from webapp.extensions import db
    from webapp.logs import register_secrets
    from webapp.models import Connection

    table = Connection.__table__
    column = table.c.credentials_encrypted if field == "credentials" else table.c.settings
    with db.engine.begin() as conn:
        locked = conn.execute(update(table).where(table.c.id == connection_id).values(id=table.c.id, updated_at=table.c.updated_at))
        if locked.rowcount != 1:
            raise ConfigError(f"connection {connection_id} no longer exists")
        raw = conn.execute(select(column).where(table.c.id == connection_id)).scalar_one()
        current = (decrypt_credentials(raw) if field == "credentials" else dict(raw or {}))
        changes = mutate(dict(current))
        if not changes:
            return current
        merged = {**current, **changes}
        if field == "credentials":
            register_secrets(changes)  # masked in logs from now on, like decrypted ones
            value = encrypt_credentials(merged)
        else:
            value = merged
        conn.execute(update(table).where(table.c.id == connection_id).values({column: value}))
    return merged


@contextlib.contextmanager
def _app_context(app):
    # Connector threads (a pool fetching order details) have no app context of their own.
    if has_app_context() or app is None:
        yield
    else:
        with app.app_context():
            yield
