"""`flask sync doctor`: checks a deployment and says what to fix (docs/DEPLOY.md).

Each check returns (ok, message); a failing message names the fix. Checks never print
secrets: they say which credential failed, never what it holds.
"""
import time
from datetime import timedelta

import redis
from flask import current_app
from sqlalchemy import select, text

from .connection_issues import describe_pause, open_by_cause
from .extensions import db, redis_ext
from .models import Connection, SupervisorState, utcnow

CLOCK_SKEW_LIMIT = 5.0  # seconds between this machine and the database or Redis


def check_configuration():
    problems, notes = [], []
    config = current_app.config
    if not config.get("SYNCHUB_ENCRYPTION_KEYS"):
        # With SQLite every process is on this machine and reads the same key file, so a
        # fresh `make run` is healthy; a server database means processes on several machines.
        if db.engine.dialect.name == "sqlite":
            notes.append("the credential key is the file in instance/ (SYNCHUB_ENCRYPTION_KEYS is unset): "
                         "back it up; set SYNCHUB_ENCRYPTION_KEYS before running on more than one machine")
        else:
            problems.append("SYNCHUB_ENCRYPTION_KEYS is unset (a key file in instance/ is used): "
                            "set it in production so every machine shares the key")
    if config["STALE_AFTER_SECONDS"] <= 2 * config["HEARTBEAT_SECONDS"]:
        problems.append(f"SYNCHUB_STALE_AFTER_SECONDS ({config['STALE_AFTER_SECONDS']}) must be well above "
                        f"SYNCHUB_HEARTBEAT_SECONDS ({config['HEARTBEAT_SECONDS']}), or live runs are swept: "
                        "make it at least 3x")
    if problems:
        return False, "; ".join(problems)
    return True, "; ".join(["settings are consistent"] + notes)


def check_database():
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    try:
        with db.engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        return False, (f"database unreachable ({type(exc).__name__}): check DATABASE_URL "
                       f"({db.engine.url.render_as_string(hide_password=True)})")
    if db.engine.dialect.name == "sqlite":
        import sqlite3

        missing = missing_sqlite_features(sqlite3.sqlite_version_info, _sqlite_has_json())
        if missing:
            return False, (f"this Python's SQLite ({sqlite3.sqlite_version}) lacks {missing}, which the record "
                           f"store needs: use a Python built with SQLite 3.35 or later, or PostgreSQL")
    script = ScriptDirectory(current_app.extensions["migrate"].directory)
    heads = set(script.get_heads())
    if current != heads:
        return False, (f"database schema is at {', '.join(sorted(current)) or 'nothing'}, code expects "
                       f"{', '.join(sorted(heads))}: run `flask --app wsgi db upgrade`")
    return True, f"database reachable, migrations current ({', '.join(sorted(heads))})"


def missing_sqlite_features(version_info, has_json):
    """What of the SQLite features the record store uses (worker/store.py) a build lacks,
    in words, or "": RETURNING (3.35) and the JSON functions (json_each)."""
    missing = []
    if tuple(version_info) < (3, 35, 0):
        missing.append("RETURNING (SQLite 3.35)")
    if not has_json:
        missing.append("the JSON functions (json_each)")
    return " and ".join(missing)


def _sqlite_has_json():
    with db.engine.connect() as conn:
        try:
            return conn.execute(text("SELECT count(*) FROM json_each('{\"a\": 1}')")).scalar_one() == 1
        except Exception:  # noqa: BLE001  "no such table: json_each" on a build without them
            return False


def check_redis():
    try:
        client = redis_ext.optional() if current_app.config.get("REDIS_URL") is None else redis_ext.client
        if client is None:
            return False, "REDIS_URL is unset and the bundled Redis is not running: start the service (`make run`) or set REDIS_URL"
        client.ping()
    except redis.RedisError as exc:
        return False, f"Redis unreachable ({type(exc).__name__}): check REDIS_URL and that redis-server runs"
    return True, "Redis reachable"


def check_workers():
    from .queue import workers as install_workers

    try:
        workers = install_workers()
    except redis.RedisError:
        return False, "cannot list workers: Redis is unreachable"
    if not workers:
        return False, "no RQ worker is alive: start one with `python -m worker` (the Procfile's worker process)"
    return True, f"{len(workers)} worker(s) alive: {', '.join(sorted(w.name for w in workers))}"


def check_supervisor():
    bound = max(60.0, 3 * current_app.config["SUPERVISOR_TICK_SECONDS"])
    recent = utcnow() - timedelta(seconds=bound)
    leaders = db.session.execute(select(SupervisorState).where(SupervisorState.is_leader.is_(True),
                                                               SupervisorState.last_tick_at >= recent)).scalars().all()
    if not leaders:
        return False, (f"no supervisor has led in the last {bound:.0f}s: start one with `python -m scheduler` "
                       "(the Procfile's scheduler process); schedules and stale-run recovery are stopped")
    return True, f"supervisor {leaders[0].name} leads"


def check_credentials():
    from .connectors.errors import ConfigError

    bad = []
    connections = db.session.execute(select(Connection).where(Connection.credentials_encrypted.is_not(None))).scalars()
    count = 0
    for connection in connections:
        count += 1
        try:
            connection.credentials
        except ConfigError:
            bad.append(connection.name)
    if bad:
        return False, (f"credentials of {', '.join(bad)} cannot be decrypted with SYNCHUB_ENCRYPTION_KEYS: add the key "
                       "they were written with (after the newest), or re-enter them in the admin")
    return True, f"encryption key decrypts all {count} stored credential(s)"


def check_clocks():
    skews = []
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            db_now = conn.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar()
        skews.append(("database", float(db_now) - time.time()))
    try:
        seconds, micros = redis_ext.client.time()
        skews.append(("Redis", seconds + micros / 1e6 - time.time()))
    except redis.RedisError:
        pass
    off = [f"{name} {skew:+.1f}s" for name, skew in skews if abs(skew) > CLOCK_SKEW_LIMIT]
    if off:
        return False, f"clock differs from this machine's: {', '.join(off)}; run NTP (chrony/systemd-timesyncd) everywhere"
    return True, "clocks agree" + (f" ({', '.join(f'{n} {s:+.2f}s' for n, s in skews)})" if skews else "")


def check_connections():
    """Open connection issues by cause; a paused connection fails the check (it needs a person)."""
    causes = open_by_cause()
    paused = db.session.execute(select(Connection).where(Connection.paused_at.is_not(None))).scalars().all()
    words = ", ".join(f"{cause} {count}" for cause, count in sorted(causes.items()))
    if paused:
        return False, "; ".join(f"{c.name} is {describe_pause(c)}" for c in paused) + (f" (open issues: {words})"
                                                                                          if words else "")
    return True, f"open issues: {words}" if words else "no open issues"


CHECKS = (
    ("configuration", check_configuration),
    ("database", check_database),
    ("redis", check_redis),
    ("workers", check_workers),
    ("supervisor", check_supervisor),
    ("credentials", check_credentials),
    ("clocks", check_clocks),
    ("connections", check_connections),
)


def run_checks():
    results = []
    for name, check in CHECKS:
        try:
            ok, message = check()
        except Exception as exc:  # a check that crashes is itself a finding, not a crash of doctor
            ok, message = False, f"check crashed ({type(exc).__name__}); this usually follows a failure above"
            db.session.rollback()
        results.append((name, ok, message))
    return results
