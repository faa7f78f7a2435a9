"""`flask tokens create|list|revoke`: API tokens. A token is printed once, at creation;
only its SHA-256 is stored, so a lost token is revoked and replaced, never recovered."""
import sys

import click
from flask.cli import AppGroup
from sqlalchemy import select

from ..extensions import db
from ..models import ApiToken
from .auth import create_token, revoke_token, token_name

tokens_cli = AppGroup("tokens", help="Create, list and revoke API tokens.")


@tokens_cli.command("create")
@click.argument("name")
def create_command(name):
    """Create a token called NAME and print it (this is the only time it is shown)."""
    try:
        name = token_name(name)
    except ValueError:
        click.secho("error: NAME must be 1 to 100 characters", fg="red", err=True)
        sys.exit(1)
    token = create_token(name)
    click.echo(token)
    click.echo("Keep it now: only its hash is stored. Use it as 'Authorization: Bearer <token>'.", err=True)


@tokens_cli.command("list")
def list_command():
    """Tokens with their use; never the tokens themselves."""
    rows = db.session.execute(select(ApiToken).order_by(ApiToken.id)).scalars().all()
    if not rows:
        click.echo("no API tokens")
    for t in rows:
        state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
        used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
        click.echo(f"{t.id:>4}  {t.name:<30} {state:<24} created {t.created_at:%Y-%m-%d}  last used {used}")


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def revoke_command(token_id):
    """Revoke token TOKEN_ID (see `flask tokens list`); it stops working at once."""
    if not revoke_token(token_id):
        click.secho(f"error: no active token {token_id}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"token {token_id} revoked")
