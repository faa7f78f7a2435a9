"""Writing a delivery: one statement, committed on its own, before the 2xx.

Deliveries go through an engine of their own in autocommit mode: the INSERT is the whole
transaction, one round trip to the database. Through the shared session the same write
took five (the pool's pre-ping, BEGIN, INSERT, COMMIT, the reset on return) and was most
of a delivery's time (bench/webhook_ingest.py); through SQLAlchemy Core on this engine
it still cost twice the driver's own time. So the statement is plain SQL on a pooled
DBAPI connection. Without pre-ping, a connection the database dropped fails its first
use; the statement is then retried once on a fresh connection, which is safe because
the INSERT is idempotent (ON CONFLICT DO NOTHING).

SQLite takes one writer at a time and makes the others sleep in growing steps, so within
a process writers take turns on a lock instead: one waiter per process, not sixteen.
"""
import json
import threading
import time

from flask import current_app
from sqlalchemy import create_engine

from ..jsonutil import serialize

ENGINE_KEY = "synchub_delivery_engine"
SQLITE_LOCK_WAIT_SECONDS = 30
_engine_lock = threading.Lock()
_sqlite_writer = threading.Lock()

COLUMNS = ("connection_id", "provider_event_id", "event_type", "received_at", "signature_verdict",
           "headers", "raw_body", "outcome", "run_ids", "duplicates")
_INSERT = ("INSERT INTO webhook_deliveries ({columns}) VALUES ({values}) "
           "ON CONFLICT (connection_id, provider_event_id) DO NOTHING RETURNING id")
_COUNT_DUPLICATE = ("UPDATE webhook_deliveries SET duplicates = duplicates + 1 "
                    "WHERE connection_id = {p} AND provider_event_id = {p} RETURNING id")
SQL = {
    "postgresql": (_INSERT.format(columns=", ".join(COLUMNS), values=", ".join(
        "%s::json" if name in ("headers", "run_ids") else "%s" for name in COLUMNS)),
        _COUNT_DUPLICATE.format(p="%s")),
    "sqlite": (_INSERT.format(columns=", ".join(COLUMNS), values=", ".join("?" for _ in COLUMNS)),
               _COUNT_DUPLICATE.format(p="?")),
}


class DeliveryNotStored(Exception):
    """The database refused or could not be reached: the delivery must not be acknowledged."""


def engine():
    made = current_app.extensions.get(ENGINE_KEY)
    if made is None:
        with _engine_lock:
            made = current_app.extensions.get(ENGINE_KEY)
            if made is None:
                # No overflow: connections beyond the pool would be opened and closed per
                # request (a PostgreSQL backend forked for each); threads queue for one instead.
                made = current_app.extensions[ENGINE_KEY] = create_engine(
                    current_app.config["SQLALCHEMY_DATABASE_URI"], isolation_level="AUTOCOMMIT",
                    json_serializer=serialize, max_overflow=0,
                    pool_size=current_app.config.get("WEBHOOK_DB_CONNECTIONS", 8))
    return made


def dispose(app):
    made = app.extensions.pop(ENGINE_KEY, None)
    if made is not None:
        made.dispose()


def insert_delivery(connection_id, event_id, event_type, received_at, headers, raw_body):
    """Store a delivery unless its (connection, provider event id) is already stored.
    Returns (delivery id, duplicate?); a duplicate is counted on the stored one."""
    bind = engine()
    dialect = bind.dialect.name
    insert, count_duplicate = SQL[dialect]
    if dialect == "sqlite":  # the text SQLAlchemy's DateTime writes and reads on SQLite
        received_at = received_at.strftime("%Y-%m-%d %H:%M:%S.%f")
    values = (connection_id, event_id, event_type, received_at, "valid", json.dumps(headers), raw_body,
              "received", "[]", 0)
    delivery_id = _fetch_id(bind, insert, values)
    if delivery_id is not None:
        return delivery_id, False
    return _fetch_id(bind, count_duplicate, (connection_id, event_id)), True


def _fetch_id(bind, sql, params, retried=False):
    sqlite = bind.dialect.name == "sqlite"
    dbapi = bind.dialect.loaded_dbapi
    writer = _sqlite_writer if sqlite else None
    if writer:
        writer.acquire()
    try:
        try:
            connection = bind.raw_connection()
        except Exception as exc:
            raise DeliveryNotStored(f"cannot connect: {type(exc).__name__}") from exc
        try:
            cursor = connection.cursor()
            if sqlite:
                row = _sqlite_execute(cursor, sql, params, dbapi)
            else:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            cursor.close()
            return row[0] if row else None
        except dbapi.Error as exc:
            connection.invalidate()  # whatever state it is in, it is not reused
            if not isinstance(exc, (dbapi.OperationalError, dbapi.InterfaceError)) or retried:
                raise DeliveryNotStored(f"{type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()
    finally:
        if writer:
            writer.release()
    return _fetch_id(bind, sql, params, retried=True)


def _sqlite_execute(cursor, sql, params, dbapi):
    """Execute, waiting for the write lock in short steps. SQLite's own busy handler (the
    busy_timeout set on every connection) sleeps 1, 2, 5 ... up to 100 ms between tries,
    which put whole batches of a dispatcher's length into a delivery's latency."""
    # This engine's connections serve only this loop. They never checkpoint the WAL either:
    # the committing writer does that synchronously (an fsync of the database file), and
    # the dispatcher, which commits after every batch of deliveries, can take that wait.
    cursor.execute("PRAGMA busy_timeout = 0")
    cursor.execute("PRAGMA wal_autocheckpoint = 0")
    deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
    pause = 0.0002
    while True:
        try:
            cursor.execute(sql, params)
            return cursor.fetchone()
        except dbapi.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
