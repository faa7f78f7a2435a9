"""`flask sync ...` and `flask connections ...`. Credentials are never printed."""
import json
import logging
import sys
import time

import click
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from . import connection_issues, local_redis, net_guard, run_request, runs, trigger_policy
from .connectors import connector_class
from .connectors import settings_spec
from .connectors.errors import ConfigError
from .error_words import run_error_words
from .extensions import db, redis_ext
from .models import RUNNING, STATUSES, TERMINAL_STATUSES, Connection, Run, RunEvent
from .progress import read_snapshot
from .schedules.parser import ScheduleError, normalize

VERBOSE_HELP = "also print the service's INFO log lines (to stderr)"


def _quiet_unless(verbose):
    """A person at a terminal wants the command's own output: log lines go to stderr at
    WARNING unless -v, or unless LOG_LEVEL was set to something other than its default."""
    from flask import current_app

    from .config import defaults

    if not verbose and current_app.config["LOG_LEVEL"] == defaults()["LOG_LEVEL"]:
        logging.getLogger().setLevel(logging.WARNING)
        local_redis.quiet()


@click.group("sync", cls=AppGroup, help="Run, list, inspect and cancel syncs.")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@with_appcontext
def sync_cli(verbose):
    _quiet_unless(verbose)


@click.group("connections", cls=AppGroup, help="Add, edit, test, list and show connections.")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@with_appcontext
def connections_cli(verbose):
    _quiet_unless(verbose)


# The run's counter `failed` is what every page calls "skipped": records that could not be stored.
COUNTER_WORDS = {"failed": "skipped"}


def _params(pairs):
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--param")
        key, value = pair.split("=", 1)
        params[key] = value
    return params


def _fail(message):
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _connection_or_fail(key):
    try:
        return runs.get_connection(key)
    except LookupError as exc:
        _fail(str(exc))


def _bar(snapshot, width=30):
    percent = snapshot.get("percent")
    filled = int(width * (percent or 0) / 100)
    bar = "#" * filled + "-" * (width - filled)
    total = snapshot.get("total")
    eta = snapshot.get("eta_seconds")
    return (f"\r[{bar}] {percent if percent is not None else '?':>5}% "
            f"{snapshot.get('processed', 0)}/{total if total is not None else '?'} "
            f"{snapshot.get('rate', 0):.0f} rec/s" + (f" ETA {eta:.0f}s" if eta is not None else "") + "   ")


@sync_cli.command("run")
@click.argument("connection")
@click.option("--mode", type=click.Choice(["full", "incremental", "range"]), default="full", show_default=True)
@click.option("--since", help="range mode: lower bound (inclusive)")
@click.option("--until", help="range mode: upper bound (exclusive)")
@click.option("--stream", "streams", multiple=True, help="limit to these streams (default: all)")
@click.option("--param", "param_pairs", multiple=True, help="connector parameter key=value (repeatable)")
@click.option("--inline/--queue", default=True, show_default=True,
              help="run here in this process (no Redis needed) or enqueue for a worker")
@click.option("--follow/--no-follow", default=True, show_default=True, help="with --queue: follow progress until it ends")
def run_command(connection, mode, since, until, streams, param_pairs, inline, follow):
    """Run a sync of CONNECTION (name or id) and show its progress."""
    params = _params(param_pairs)
    params.update({k: v for k, v in (("since", since), ("until", until)) if v is not None})
    try:
        conn = runs.get_connection(connection)
        wanted = run_request.check(conn, mode=mode, params=params, streams=streams)
        result = runs.trigger(conn, mode=wanted.mode, params=wanted.params, trigger="cli", requested_by="cli",
                              streams=wanted.streams, enqueue=not inline)
    except (LookupError, ConfigError, run_request.RunRequestError) as exc:
        _fail(str(exc))
    run = result.run
    if result.outcome == "follow_up":
        click.echo(f"run {run.id}: {mode} sync of {conn.name}, waiting: run {result.active.id} (another sync of this "
                   "connection) is active; this one starts when it ends")
        if inline:
            click.echo(f"a worker will run it; follow with: flask sync status {run.id}")
            return
    elif not result.created:
        click.echo(f"run {run.id} is already {run.status} for {conn.name}; following it instead")
        inline = False
    else:
        click.echo(f"run {run.id}: {mode} sync of {conn.name}")
    if inline:
        from worker.engine import execute_run  # the CLI's inline mode is the one place webapp reaches into worker

        status = execute_run(run.id, redis_client=redis_ext.optional(), worker_name="cli-inline",
                             on_progress=lambda s: click.echo(_bar(s), nl=False))
        click.echo()
    elif follow:
        status = _follow(run.id)
    else:
        click.echo(f"queued; follow with: flask sync status {run.id}")
        return
    _print_run(db.session.get(Run, run.id))
    if status != "completed":
        sys.exit(1)


def _follow(run_id, poll=0.5):
    client = redis_ext.optional()
    while True:
        db.session.expire_all()
        run = db.session.get(Run, run_id)
        snapshot = (read_snapshot(client, run_id) if client else None) or {
            "percent": run.percent, "processed": run.processed, "total": run.total, "rate": 0}
        click.echo(_bar(snapshot), nl=False)
        if run.status in TERMINAL_STATUSES:
            click.echo()
            return run.status
        time.sleep(poll)


def _print_run(run):
    c = run.counters
    click.echo(f"run {run.id} {run.status} ({run.mode}, {run.trigger}, attempt {run.attempt}/{run.max_attempts})")
    click.echo("  " + ", ".join(f"{COUNTER_WORDS.get(k, k)} {v}" for k, v in c.items()))
    reason = runs.waiting_reason(run)
    if reason:
        click.echo(f"  {reason}")
    elif run.error_message:
        click.echo(f"  error ({run_error_words(run.error_class)}): {run.error_message}")


@sync_cli.command("list")
@click.option("--connection", help="name or id")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--limit", default=20, show_default=True)
def list_command(connection, status, limit):
    """Recent runs, newest first."""
    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if connection:
        try:
            query = query.where(Run.connection_id == runs.get_connection(connection).id)
        except LookupError as exc:
            _fail(str(exc))
    if status:
        query = query.where(Run.status == status)
    rows = db.session.execute(query).scalars().all()
    if not rows:
        click.echo("no runs" + (" match" if connection or status else " yet"))
        return
    header = (f"{'RUN':>6}  {'CONNECTION':<20} {'MODE':<11} {'TRIGGER':<8} {'STATUS':<9} {'CREATED (UTC)':<19} "
              f"{'DURATION':>8} {'SEEN':>7} {'NEW':>7} {'CHANGED':>7} {'UNCHANGED':>9} {'DELETED':>7} {'SKIPPED':>7}")
    click.echo(header)
    for run in rows:
        c = run.counters
        duration = (f"{(run.finished_at - run.started_at).total_seconds():.1f}s"
                    if run.started_at and run.finished_at else "-")
        click.echo(f"{run.id:>6}  {run.connection.name[:20]:<20} {run.mode:<11} {run.trigger:<8} {run.status:<9} "
                   f"{run.created_at:%Y-%m-%d %H:%M:%S} {duration:>8} {c['seen']:>7} {c['created']:>7} "
                   f"{c['updated']:>7} {c['unchanged']:>9} {c['deleted']:>7} {c['failed']:>7}")


@sync_cli.command("status")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--follow", is_flag=True, help="show progress until the run ends")
def status_command(run_id, as_json, follow):
    """Show one run, with its last activity and record errors."""
    run = db.session.get(Run, run_id)
    if run is None:
        _fail(f"no run {run_id}")
    if follow and run.status not in TERMINAL_STATUSES:
        _follow(run_id)
        db.session.expire_all()
        run = db.session.get(Run, run_id)
    if as_json:
        click.echo(json.dumps(runs.run_dict(run), indent=2))
        return
    _print_run(run)
    events = db.session.execute(select(RunEvent).where(RunEvent.run_id == run_id)
                                .order_by(RunEvent.id.desc()).limit(15)).scalars().all()
    for event in reversed(events):
        key = f" [{event.record_key}]" if event.record_key else ""
        click.echo(f"  {event.created_at:%H:%M:%S} {event.level:<7}{key} {event.message}")


@sync_cli.command("cancel")
@click.argument("run_id", type=int)
def cancel_command(run_id):
    """Cancel a waiting, queued or running run (also one whose worker is gone)."""
    run = db.session.get(Run, run_id)
    if run is None:
        _fail(f"no run {run_id}")
    if run.status in TERMINAL_STATUSES:
        click.echo(f"run {run_id} had already ended ({run.status}): nothing to cancel")
        return
    try:
        status = runs.cancel(run_id, requested_by="cli")
    except LookupError as exc:
        _fail(str(exc))
    if status == RUNNING:
        click.echo(f"run {run_id}: cancel requested; the worker stops at the next page")
    else:
        click.echo(f"run {run_id}: {status}")


@sync_cli.command("doctor")
def doctor_command():
    """Check configuration, database, Redis, workers, supervisor, keys and clocks."""
    from .doctor import run_checks

    results = run_checks()
    for name, ok, message in results:
        click.echo(f"{'ok  ' if ok else 'FAIL'}  {name:<14} {message}")
    failed = [name for name, ok, _ in results if not ok]
    if failed:
        click.echo(f"\n{len(failed)} problem(s): {', '.join(failed)}")
        sys.exit(1)
    click.echo("\nall checks passed")


@connections_cli.command("add")
@click.argument("name")
@click.option("--connector", required=True)
@click.option("--setting", "setting_pairs", multiple=True, help="key=value; a JSON value is parsed")
@click.option("--settings-json", help="all settings as one JSON object")
@click.option("--credentials-json", help="credentials as JSON; prefer --credentials-stdin")
@click.option("--credentials-stdin", is_flag=True, help="read credentials JSON from standard input")
@click.option("--schedule", default="manual", show_default=True, help='manual | every:N | hourly:M | "cron:EXPR"')
@click.option("--disabled", is_flag=True)
def add_command(name, connector, setting_pairs, settings_json, credentials_json, credentials_stdin, schedule, disabled):
    """Add a connection."""
    try:
        connector_class(connector)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        base = json.loads(settings_json) if settings_json else {}
    except ValueError:
        _fail("--settings-json is not valid JSON")
    if not isinstance(base, dict):
        _fail("--settings-json must be a JSON object")
    settings = _typed_settings(connector_class(connector), base, _params(setting_pairs))
    raw = sys.stdin.read() if credentials_stdin else credentials_json
    try:
        credentials = json.loads(raw) if raw else {}
    except ValueError:
        _fail("credentials are not valid JSON")  # the text itself is never echoed
    try:
        net_guard.check_settings(settings)
        net_guard.check_settings(credentials)
    except net_guard.UnsafeURL as exc:
        _fail(str(exc))
    if db.session.execute(select(Connection).where(Connection.name == name)).scalar_one_or_none():
        _fail(f"a connection named {name!r} exists")
    try:
        schedule = normalize(schedule)
    except ScheduleError as exc:
        _fail(str(exc))
    conn = Connection(name=name, connector=connector, settings=settings, schedule=schedule, enabled=not disabled)
    conn.credentials = credentials
    db.session.add(conn)
    db.session.commit()
    click.echo(f"connection {conn.id} {name!r} ({connector}) added")


def _typed_settings(cls, settings, pairs, unset=()):
    """`settings` with `pairs` (key=text) applied: declared settings parsed by their type,
    others read as JSON when they are JSON. Every declared setting is then checked against
    the connector's declaration, as the admin form does; all problems end the command at once."""
    specs = settings_spec.by_name(cls.settings_spec)
    settings = {k: v for k, v in settings.items() if k not in unset}
    problems = {}
    for key, text in pairs.items():
        if key in specs:
            try:
                value = settings_spec.parse_text(specs[key], text)
            except ValueError as exc:
                problems[key] = str(exc)
                continue
            settings.pop(key, None)
            if value is not None:
                settings[key] = value
        else:
            try:
                settings[key] = json.loads(text)
            except ValueError:
                settings[key] = text
    problems.update({k: v for k, v in settings_spec.check_settings(cls.settings_spec, settings).items()
                     if k not in problems})
    if problems:
        in_order = {name: problems[name] for name in specs if name in problems}
        _fail("settings need fixing: " + settings_spec.describe_errors(in_order))
    if settings.get(trigger_policy.SETTING) is not None:
        try:
            settings[trigger_policy.SETTING] = trigger_policy.validate(settings[trigger_policy.SETTING])
        except ValueError as exc:
            _fail(str(exc))
    return settings


@connections_cli.command("edit")
@click.argument("connection")
@click.option("--setting", "setting_pairs", multiple=True, help="key=value; typed by the connector's declaration")
@click.option("--unset", "unset", multiple=True, help="remove this setting (its default applies)")
@click.option("--schedule", help='manual | every:N | hourly:M | "cron:EXPR"')
@click.option("--enable/--disable", "enabled", default=None)
def edit_command(connection, setting_pairs, unset, schedule, enabled):
    """Change a connection's settings, schedule or enabled flag (credentials: the admin)."""
    from .schedules import firing

    conn = _connection_or_fail(connection)
    try:
        cls = connector_class(conn.connector)
    except ConfigError as exc:
        _fail(str(exc))
    settings = _typed_settings(cls, dict(conn.settings or {}), _params(setting_pairs), unset)
    if schedule is not None:
        try:
            schedule = normalize(schedule)
        except ScheduleError as exc:
            _fail(str(exc))
    before = (conn.schedule, conn.enabled, conn.allowed_triggers)
    conn.settings = settings
    conn.schedule = schedule if schedule is not None else conn.schedule
    conn.enabled = enabled if enabled is not None else conn.enabled
    if (conn.schedule, conn.enabled, conn.allowed_triggers) != before:
        firing.reschedule(conn)
    db.session.commit()
    click.echo(f"connection {conn.id} {conn.name!r} saved")


@connections_cli.command("test")
@click.argument("connection")
def test_command(connection):
    """Authenticate and read the first page of each stream; store nothing."""
    from .connection_probe import probe

    result = probe(_connection_or_fail(connection))
    for s in result.streams:
        if s.ok:
            total = f" of {s.total}" if s.total is not None else ""
            click.echo(f"  {s.stream:<16} ok      {s.count}{total} records; fields: {', '.join(s.keys) or '-'}")
        else:
            click.echo(f"  {s.stream:<16} FAILED  {s.message}")
    if not result.ok:
        _fail(result.message)
    click.echo(result.message)


@connections_cli.command("ensure-demo")
def ensure_demo_command():
    """Create the `demo` sandbox connection if it does not exist (used by `make run`)."""
    if db.session.execute(select(Connection).where(Connection.name == "demo")).scalar_one_or_none():
        click.echo("connection 'demo' exists")
        return
    db.session.add(Connection(name="demo", connector="sandbox",
                              settings={"records": 5000, "page_size": 250, "latency_ms": 100, "bad_every": 997}))
    db.session.commit()
    click.echo("connection 'demo' (sandbox) created")


@connections_cli.command("list")
def list_connections_command():
    for conn in db.session.execute(select(Connection).order_by(Connection.id)).scalars():
        click.echo(f"{conn.id:>4}  {conn.name:<24} {conn.connector:<10} {conn.schedule:<16} "
                   f"{'enabled' if conn.enabled else 'disabled':<9} {conn.health}")


@connections_cli.command("show")
@click.argument("connection")
def show_command(connection):
    """Show a connection's settings. Credentials show only which keys are set."""
    conn = _connection_or_fail(connection)
    click.echo(f"id:          {conn.id}\nname:        {conn.name}\nconnector:   {conn.connector}\n"
               f"schedule:    {conn.schedule}\nenabled:     {conn.enabled}\nhealth:      {conn.health}"
               + (f" ({conn.health_message})" if conn.health_message else ""))
    click.echo("triggers:    " + trigger_policy.describe(conn.settings, conn.manual_only))
    open_issues = connection_issues.open_issues(conn.id)
    click.echo("state:       " + (connection_issues.describe_pause(conn) or "running normally")
               + (f"; open issues: {', '.join(f'{i.cause} ({i.occurrences}x)' for i in open_issues)}"
                  if open_issues else ""))
    click.echo("settings:    " + json.dumps(conn.settings, sort_keys=True))
    try:
        keys = sorted(conn.credentials)
    except ConfigError as exc:
        keys = [f"<{exc}>"]
    click.echo("credentials: " + (", ".join(f"{k}=<set>" for k in keys) if keys else "none"))
