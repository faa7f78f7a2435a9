"""`flask users ...` (admin accounts) and `flask secrets rotate` (credential key rotation)."""
import sys

import click
from cryptography.fernet import InvalidToken
from flask.cli import AppGroup
from sqlalchemy import select, update

from ..credentials import rotate_token
from ..extensions import db
from ..models import Connection, User
from .auth import create_admin, set_password

users_cli = AppGroup("users", help="Admin accounts.")
secrets_cli = AppGroup("secrets", help="Credential encryption keys.")


def _fail(message):
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@users_cli.command("create-admin")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="prompted for when omitted (keeps it out of the shell history)")
def create_admin_command(email, password):
    """Create an admin who can log in to the admin pages."""
    try:
        create_admin(email, password)
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"admin {email.strip().lower()} created")


@users_cli.command("set-password")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
def set_password_command(email, password):
    """Set a new password (ends the user's sessions and lifts a login lock)."""
    try:
        set_password(email, password)
    except (ValueError, LookupError) as exc:
        _fail(str(exc))
    click.echo(f"password of {email.strip().lower()} changed")


@users_cli.command("list")
def list_command():
    for user in db.session.execute(select(User).order_by(User.email)).scalars():
        locked = f" locked until {user.locked_until:%Y-%m-%d %H:%M} UTC" if user.locked_until else ""
        click.echo(f"{user.email}  last login {user.last_login_at or 'never'}{locked}")


@secrets_cli.command("rotate")
def rotate_command():
    """Re-encrypt every connection's credentials under the newest key.

    Put the new key first in SYNCHUB_ENCRYPTION_KEYS and keep the old ones after it, run
    this, then drop the old keys. Each row is updated only if nobody changed it meanwhile,
    and re-running is harmless, so an interrupted rotation is finished by running it again.
    """
    rows = db.session.execute(select(Connection.id, Connection.credentials_encrypted)
                              .where(Connection.credentials_encrypted.is_not(None))).all()
    rotated = skipped = 0
    unreadable = []
    for connection_id, token in rows:
        try:
            new_token = rotate_token(token)
        except InvalidToken:
            unreadable.append(connection_id)
            continue
        result = db.session.execute(
            update(Connection)
            .where(Connection.id == connection_id, Connection.credentials_encrypted == token)
            .values(credentials_encrypted=new_token)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()  # row by row: an interruption leaves every row readable
        if result.rowcount == 1:
            rotated += 1
        else:
            skipped += 1
    click.echo(f"re-encrypted the credentials of {rotated} connection(s) under the newest key"
               + (f"; {skipped} changed meanwhile (already under the newest key)" if skipped else ""))
    if unreadable:
        _fail(f"connection(s) {', '.join(map(str, unreadable))}: credentials match none of the configured "
              "keys; add the key they were written with to SYNCHUB_ENCRYPTION_KEYS (after the new one)")
