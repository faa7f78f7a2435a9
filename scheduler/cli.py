"""`flask supervisor status|alerts|cleanup|schedules`: look at and drive the supervisor's work."""
import click
from flask.cli import AppGroup
from sqlalchemy import select

from webapp import alerts, retention
from webapp.schedules import parser
from webapp.extensions import db, redis_ext
from webapp.models import Connection, utcnow

from .leader import holder

supervisor_cli = AppGroup("supervisor", help="Supervisor status, alerts, retention cleanup and schedules.")


def _when(value):
    return value.isoformat(timespec="seconds") + "Z" if value else "-"


@supervisor_cli.command("status")
def status_command():
    """Supervisors with their last heartbeat, the lease holder, and open alerts."""
    now = utcnow()
    rows = alerts.supervisors(now)
    client = redis_ext.optional()
    lease = holder(client) if client is not None else None
    click.echo(f"leader (Redis lease): {lease or 'nobody'}" + ("" if client is not None else "  [Redis unreachable]"))
    if not rows:
        click.echo("no supervisor has ever run: start one with `python -m scheduler`")
    for row in rows:
        age = f"{(now - row['last_tick_at']).total_seconds():.0f}s ago" if row["last_tick_at"] else "never"
        click.echo(f"  {row['name']:<40} {'LEADER' if row['is_leader'] else 'follower':<8} "
                   f"{'alive' if row['alive'] else 'SILENT':<6} last tick {age} (pid {row['pid']} on {row['hostname']})")
    open_alerts = alerts.open_alerts()
    click.echo(f"open alerts: {len(open_alerts)}")
    for alert in open_alerts:
        click.echo(f"  [{alert.kind}] {alert.subject + ': ' if alert.subject else ''}{alert.message} (since {_when(alert.fired_at)})")


@supervisor_cli.command("alerts")
@click.option("--sync/--no-sync", default=False, show_default=True,
              help="also open/clear alert rows and send notifications (e.g. from an external cron, "
                   "which still works when every supervisor is down)")
def alerts_command(sync):
    """Show the alert conditions that hold right now."""
    if sync:
        result = alerts.sync_alerts()
        click.echo(f"fired {len(result.fired)}, cleared {len(result.cleared)}")
    conditions = alerts.current_conditions()
    if not conditions:
        click.echo("no alert conditions")
    for c in conditions:
        click.echo(f"[{c.kind}] {c.subject + ': ' if c.subject else ''}{c.message}")


@supervisor_cli.command("cleanup")
@click.option("--days", type=float, default=None, help="one retention window for every kind (default: the settings)")
def cleanup_command(days):
    """Delete history older than the retention windows now (the leader also does it hourly)."""
    overrides = {} if days is None else {k: days for k in ("runs", "run_events", "webhook_deliveries", "outbox_events")}
    try:
        counts = retention.cleanup(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@supervisor_cli.command("schedules")
def schedules_command():
    """Every connection's schedule and next run."""
    for conn in db.session.execute(select(Connection).order_by(Connection.name)).scalars():
        try:
            described = parser.parse(conn.schedule).describe()
        except parser.ScheduleError as exc:
            described = f"UNUSABLE: {exc}"
        state = "" if conn.enabled else " (disabled)"
        click.echo(f"{conn.name:<30} {described:<40} next: {_when(conn.next_run_at)}{state}")
