"""Committing a delivery before its 2xx: the web process's one write to webhook_deliveries.

Each web process has one GroupCommitWriter (group_commit.py) with SYNCHUB_WEBHOOK_DB_WRITERS
writers (default 1). A batch is one multi-row INSERT ... ON CONFLICT DO NOTHING RETURNING,
its own transaction; a row whose (connection, provider event id) was stored before, or
came twice in the batch, is a duplicate and is counted on the stored delivery.

The statement is plain SQL on a pooled DBAPI connection of an engine of its own: SQLAlchemy
Core cost as much again as the driver's own time (docs/PERFORMANCE.md, "Webhook intake as
named components").
Without pre-ping, a connection the database dropped fails its first use: the batch is then
retried once on a fresh connection, which is safe because the INSERT is idempotent. A row
the database refuses (bad data) fails only its own request: the batch is retried row by row.
"""
import json
import logging
import threading
import time

from flask import current_app
from sqlalchemy import create_engine

from ..jsonutil import serialize
from .group_commit import GroupCommitWriter, NotWrittenInTime

log = logging.getLogger(__name__)

ENGINE_KEY = "synchub_delivery_engine"
WRITER_KEY = "synchub_delivery_writer"
SQLITE_LOCK_WAIT_SECONDS = 30
# A request waits this long for another thread's batch to store its row (then 503).
WAIT_SECONDS = SQLITE_LOCK_WAIT_SECONDS + 5
MAX_BATCH = 500  # 10 parameters a row: far below PostgreSQL's and SQLite's limits
_setup_lock = threading.Lock()
_sqlite_writer = threading.Lock()

COLUMNS = ("connection_id", "provider_event_id", "event_type", "received_at", "signature_verdict",
           "headers", "raw_body", "outcome", "run_ids", "duplicates")
ROW = {
    "postgresql": "(" + ", ".join("%s::json" if name in ("headers", "run_ids") else "%s" for name in COLUMNS) + ")",
    "sqlite": "(" + ", ".join("?" for _ in COLUMNS) + ")",
}
_INSERT = ("INSERT INTO webhook_deliveries (" + ", ".join(COLUMNS) + ") VALUES {rows} "  # noqa: S608  column names and placeholders of ours; values are bound
           "ON CONFLICT (connection_id, provider_event_id) DO NOTHING RETURNING id, connection_id, provider_event_id")
COUNT_DUPLICATE = {
    dialect: ("UPDATE webhook_deliveries SET duplicates = duplicates + 1 "  # noqa: S608  only the driver's placeholder is formatted in
              f"WHERE connection_id = {p} AND provider_event_id = {p} RETURNING id")
    for dialect, p in (("postgresql", "%s"), ("sqlite", "?"))
}


class DeliveryNotStored(Exception):
    """The database refused or could not be reached: the delivery must not be acknowledged."""


def engine():
    made = current_app.extensions.get(ENGINE_KEY)
    if made is None:
        with _setup_lock:
            made = current_app.extensions.get(ENGINE_KEY)
            if made is None:
                made = current_app.extensions[ENGINE_KEY] = create_engine(
                    current_app.config["SQLALCHEMY_DATABASE_URI"], isolation_level="AUTOCOMMIT",
                    json_serializer=serialize, max_overflow=0,
                    # The same bounded waits on an unanswering server as the app's engine (webapp/config.py).
                    connect_args=current_app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("connect_args", {}),
                    pool_size=current_app.config["WEBHOOK_DB_WRITERS"])
    return made


def writer():
    """This process's GroupCommitWriter (a forked child makes its own: it must not inherit
    the parent's queue, turns or lock)."""
    made = current_app.extensions.get(WRITER_KEY)
    if made is None or not made.in_this_process():
        bind = engine()
        with _setup_lock:
            made = current_app.extensions.get(WRITER_KEY)
            if made is None or not made.in_this_process():
                made = current_app.extensions[WRITER_KEY] = GroupCommitWriter(
                    _BatchInsert(bind), writers=current_app.config["WEBHOOK_DB_WRITERS"],
                    max_batch=MAX_BATCH, wait_seconds=WAIT_SECONDS)
    return made


def dispose(app):
    app.extensions.pop(WRITER_KEY, None)
    made = app.extensions.pop(ENGINE_KEY, None)
    if made is not None:
        made.dispose()


def insert_delivery(connection_id, event_id, event_type, received_at, headers, raw_body):
    """Store a delivery unless its (connection, provider event id) is already stored.
    Returns (delivery id, duplicate?) once it is committed; a duplicate is counted on the
    stored one. Raises DeliveryNotStored when it could not be stored."""
    bind = engine()
    if bind.dialect.name == "sqlite":  # the text SQLAlchemy's DateTime writes and reads on SQLite
        received_at = received_at.strftime("%Y-%m-%d %H:%M:%S.%f")
    values = (connection_id, event_id, event_type, received_at, "valid", json.dumps(headers), raw_body,
              "received", "[]", 0)
    try:
        return writer().submit(values)
    except NotWrittenInTime as exc:  # dropped: the provider retries, the unique event id keeps a late commit single
        raise DeliveryNotStored(str(exc)) from None


class _BatchInsert:
    """The GroupCommitWriter's write_batch: rows of delivery values in, one outcome per row
    out, (delivery id, duplicate?) or DeliveryNotStored."""

    def __init__(self, bind):
        self._bind = bind
        self._dialect = bind.dialect.name
        self._dbapi = bind.dialect.loaded_dbapi

    def __call__(self, rows):
        outcomes = [None] * len(rows)
        try:
            self._write(rows, range(len(rows)), outcomes)
        except Exception as exc:  # the database could not be reached, or a bug: fail what is left
            if not isinstance(exc, DeliveryNotStored):
                log.exception("webhook delivery writer: batch of %d failed", len(rows))
                exc = DeliveryNotStored(f"{type(exc).__name__}: {exc}")
            outcomes = [exc if outcome is None else outcome for outcome in outcomes]
        return outcomes

    def _write(self, rows, indexes, outcomes):
        try:
            self._store(rows, indexes, outcomes)
        except self._dbapi.Error as exc:
            unsettled = [index for index in indexes if outcomes[index] is None]
            if len(unsettled) > 1 and not isinstance(exc, (self._dbapi.OperationalError, self._dbapi.InterfaceError)):
                for index in unsettled:  # one bad row must not fail the others
                    self._write(rows, [index], outcomes)
                return
            for index in unsettled:
                outcomes[index] = DeliveryNotStored(f"{type(exc).__name__}: {exc}")

    def _store(self, rows, indexes, outcomes):
        """INSERT the rows at `indexes`, settle the ones it stored, count the duplicates."""
        stored_rows = self._execute(_INSERT.format(rows=", ".join([ROW[self._dialect]] * len(indexes))),
                                    [value for index in indexes for value in rows[index]])
        stored = {(connection_id, event_id): delivery_id for delivery_id, connection_id, event_id in stored_rows}
        duplicates = []
        for index in indexes:
            delivery_id = stored.pop((rows[index][0], rows[index][1]), None)
            if delivery_id is not None:
                outcomes[index] = (delivery_id, False)
            else:  # stored before, or earlier in this batch
                duplicates.append(index)
        for index in duplicates:
            found = self._execute(COUNT_DUPLICATE[self._dialect], rows[index][:2])
            outcomes[index] = (found[0][0] if found else None, True)

    def _execute(self, sql, params, retried=False):
        """Rows returned by one autocommit statement; retried once on a fresh connection
        when the one it had was dropped."""
        sqlite = self._dialect == "sqlite"
        if sqlite:
            _sqlite_writer.acquire()
        try:
            try:
                connection = self._bind.raw_connection()
            except Exception as exc:
                raise DeliveryNotStored(f"cannot connect: {type(exc).__name__}") from exc
            try:
                cursor = connection.cursor()
                rows = _sqlite_execute(cursor, sql, params, self._dbapi) if sqlite else _pg_execute(cursor, sql, params)
                cursor.close()
                return rows
            except self._dbapi.Error as exc:
                connection.invalidate()  # whatever state it is in, it is not reused
                if not isinstance(exc, (self._dbapi.OperationalError, self._dbapi.InterfaceError)) or retried:
                    raise
            finally:
                connection.close()
        finally:
            if sqlite:
                _sqlite_writer.release()
        return self._execute(sql, params, retried=True)


def _pg_execute(cursor, sql, params):
    cursor.execute(sql, params)
    return cursor.fetchall()


def _sqlite_execute(cursor, sql, params, dbapi):
    """Execute, waiting for the write lock in short steps. SQLite's own busy handler (the
    busy_timeout set on every connection) sleeps 1, 2, 5 ... up to 100 ms between tries,
    which puts whole dispatcher transactions into a delivery's latency; this loop's p99 is
    several times lower (docs/PERFORMANCE.md, "Webhook intake as named components")."""
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
            return cursor.fetchall()
        except dbapi.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
