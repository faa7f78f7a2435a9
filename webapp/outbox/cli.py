"""`flask outbox drain|list|retry|discard`."""
import sys

import click
from flask.cli import AppGroup

from ..extensions import db, redis_ext
from ..models import OUTBOX_STATUSES
from . import queries
from .enqueue import enqueue_drain
from .statuses import DEAD, PENDING

outbox_cli = AppGroup("outbox", help="Send, inspect, retry and discard outbox events.")


def _fail(message):
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


@outbox_cli.command("drain")
@click.option("--inline/--queue", default=True, show_default=True,
              help="send here in this process, or enqueue a drain job for the workers")
@click.option("--budget", type=float, default=None, help="stop after this many seconds (default: config)")
def drain_command(inline, budget):
    """Send every event that is due."""
    if not inline:
        try:
            job_id = enqueue_drain()
        except Exception as exc:
            _fail(f"could not enqueue the drain ({type(exc).__name__}); try --inline")
        click.echo(f"drain job {job_id} queued" if job_id else "a drain job is already queued")
        return
    # An --inline command does the worker's job in this process, like `flask sync run
    # --inline`: the one kind of webapp code allowed to import worker, and only here.
    from worker.outbox_sender import drain

    result = drain(redis_client=redis_ext.optional(), worker_name="cli", budget_seconds=budget)
    click.echo(", ".join(f"{name} {value}" for name, value in result.as_dict().items()))
    counts = queries.counts(db.session)
    click.echo("outbox: " + ", ".join(f"{status} {counts[status]}" for status in OUTBOX_STATUSES))


@outbox_cli.command("list")
@click.option("--status", type=click.Choice(OUTBOX_STATUSES))
@click.option("--type", "type_", help="only this event type")
@click.option("--key", help="only this key")
@click.option("--limit", default=20, show_default=True)
def list_command(status, type_, key, limit):
    """Counts by status, then recent events (newest first) with their last error."""
    counts = queries.counts(db.session)
    click.echo("outbox: " + ", ".join(f"{s} {counts[s]}" for s in OUTBOX_STATUSES))
    for row in queries.list_events(db.session, status=status, type=type_, key=key, limit=limit):
        line = (f"{row.id:>7}  {row.status:<10} {row.type:<24} {row.key:<32} "
                f"attempts {row.attempts}/{row.max_attempts}")
        if row.status == PENDING and row.attempts:
            line += f"  next {row.next_attempt_at:%Y-%m-%d %H:%M:%S}Z"
        click.echo(line)
        if row.last_error and row.status in (PENDING, DEAD):
            click.echo(f"         last error: {row.last_error}")


def _selected(ids, all_dead, type_, key):
    if ids and all_dead:
        _fail("give event ids or --all-dead, not both")
    if all_dead:
        return queries.matching_ids(db.session, status=DEAD, type=type_, key=key)
    if type_ or key:
        _fail("--type and --key narrow --all-dead")
    if not ids:
        _fail("give event ids, or --all-dead")
    return list(ids)


@outbox_cli.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-dead", is_flag=True, help="every dead event (narrow with --type / --key)")
@click.option("--type", "type_")
@click.option("--key")
def retry_command(ids, all_dead, type_, key):
    """Make dead (or waiting) events due now, with a fresh set of attempts."""
    count = queries.retry(db.session, _selected(ids, all_dead, type_, key))
    click.echo(f"{count} event(s) queued for delivery")


@outbox_cli.command("discard")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-dead", is_flag=True, help="every dead event (narrow with --type / --key)")
@click.option("--type", "type_")
@click.option("--key")
@click.confirmation_option(prompt="Discarded events are deleted and never sent. Go on?")
def discard_command(ids, all_dead, type_, key):
    """Delete pending or dead events; they will never be sent."""
    count = queries.discard(db.session, _selected(ids, all_dead, type_, key))
    click.echo(f"{count} event(s) discarded")
