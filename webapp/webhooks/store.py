"""Writing a delivery: committed before the 2xx, many deliveries to a commit.

Group commit (GroupWriter): a request thread that finds a writer's turn free stores every
row queued at that moment, its own among them, with one multi-row INSERT that is its own
transaction; the other threads wait for their rows to be stored by such a batch. A
request is answered only after its row is committed, but under load a commit (a WAL flush
on PostgreSQL, the lock and a WAL append on SQLite) is paid per batch, not per delivery,
and the database serves a few writers instead of a connection per busy thread. The
batches grow by themselves: rows pile up while the batches before them commit.

The statement is plain SQL on a pooled DBAPI connection (SQLAlchemy Core cost twice the
driver's own time). Without pre-ping, a connection the database dropped fails its first
use; the batch is then retried once on a fresh connection, which is safe because the
INSERT is idempotent (ON CONFLICT DO NOTHING). A row the database refuses (bad data)
fails only its own request: the batch is retried row by row.
"""
import collections
import json
import logging
import os
import threading
import time

from flask import current_app
from sqlalchemy import create_engine

from ..jsonutil import serialize

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
_INSERT = ("INSERT INTO webhook_deliveries (" + ", ".join(COLUMNS) + ") VALUES {rows} "
           "ON CONFLICT (connection_id, provider_event_id) DO NOTHING RETURNING id, connection_id, provider_event_id")
COUNT_DUPLICATE = {
    dialect: ("UPDATE webhook_deliveries SET duplicates = duplicates + 1 "
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
                    pool_size=current_app.config["WEBHOOK_DB_WRITERS"])
    return made


def writer():
    """This process's group writer (a forked child makes its own: it must not inherit the
    parent's queue, turns or lock)."""
    made = current_app.extensions.get(WRITER_KEY)
    if made is None or made.pid != os.getpid():
        bind = engine()
        with _setup_lock:
            made = current_app.extensions.get(WRITER_KEY)
            if made is None or made.pid != os.getpid():
                made = current_app.extensions[WRITER_KEY] = GroupWriter(
                    bind, current_app.config["WEBHOOK_DB_WRITERS"])
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
    return writer().submit(values)


class _Pending:
    """A row handed over by a request thread, and what became of it."""

    __slots__ = ("values", "wake", "settled", "result", "error", "lead")

    def __init__(self, values):
        self.values, self.wake = values, threading.Event()
        self.settled, self.result, self.error, self.lead = False, None, None, False

    def settle(self, result=None, error=None):
        self.result, self.error, self.settled = result, error, True
        self.wake.set()


class GroupWriter:
    """Group commit among a process's request threads (leader and followers).

    A request thread queues its row. If fewer than `writers` batches are being written, it
    writes one itself: every row queued at that moment, its own among them. Otherwise it
    waits, and is woken either with its row stored (or refused) by another thread's batch,
    or to write the next batch itself, which is how a finishing writer hands on its turn.
    When the database keeps up, a request writes its own row at once, with no handoff; when
    it does not, rows pile up behind the writers and go in together."""

    def __init__(self, bind, writers):
        self.pid = os.getpid()
        self._bind = bind
        self._dialect = bind.dialect.name
        self._dbapi = bind.dialect.loaded_dbapi
        self._lock = threading.Lock()
        self._queued = collections.deque()
        self._free = max(1, writers)
        self.batches = 0  # statements written, for tests and curiosity

    def submit(self, values):
        me = _Pending(values)
        with self._lock:
            self._queued.append(me)
            if self._free > 0:
                self._free -= 1
                me.lead = True
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if me.lead:  # this thread's turn to write (its own row may be in someone else's batch)
                me.lead = False
                self._write_next_batch()
            if me.settled:
                break
            me.wake.clear()  # flags are set before the event, so nothing is missed in between
            if me.settled or me.lead:
                continue
            if not me.wake.wait(max(0.0, deadline - time.monotonic())):
                self._give_up(me)  # raises, unless the row is being written: then wait for that
                deadline = time.monotonic() + WAIT_SECONDS
        if me.error is not None:
            raise me.error
        return me.result

    def _give_up(self, me):
        """The wait ran out. Raises DeliveryNotStored if the row is still only queued (it
        is dropped: the provider retries, and the unique event id keeps a late commit
        from doubling the delivery); returns if it is being written or its turn came."""
        with self._lock:
            if me.settled or me.lead:
                return
            try:
                self._queued.remove(me)
            except ValueError:  # in a batch being written right now: its outcome is coming
                return
        raise DeliveryNotStored(f"not stored within {WAIT_SECONDS} s")

    def _write_next_batch(self):
        with self._lock:
            batch = [self._queued.popleft() for _ in range(min(MAX_BATCH, len(self._queued)))]
        try:
            if batch:
                self.batches += 1
                self._write(batch)
        except Exception as exc:  # never leave a request waiting
            if not isinstance(exc, DeliveryNotStored):
                log.exception("webhook delivery writer: batch of %d failed", len(batch))
                exc = DeliveryNotStored(f"{type(exc).__name__}: {exc}")
            for pending in batch:
                if not pending.settled:
                    pending.settle(error=exc)
        finally:
            with self._lock:  # hand the turn on to the oldest row not already given one, or free it
                for pending in self._queued:
                    if not pending.lead:
                        pending.lead = True
                        pending.wake.set()
                        break
                else:
                    self._free += 1

    def _write(self, batch):
        try:
            self._store(batch)
        except self._dbapi.Error as exc:
            unsettled = [pending for pending in batch if not pending.settled]
            if len(unsettled) > 1 and not isinstance(exc, (self._dbapi.OperationalError, self._dbapi.InterfaceError)):
                for pending in unsettled:  # one bad row must not fail the others
                    self._write([pending])
                return
            for pending in unsettled:
                pending.settle(error=DeliveryNotStored(f"{type(exc).__name__}: {exc}"))

    def _store(self, batch):
        """INSERT the batch, answer the rows it stored, count the duplicates."""
        rows = self._execute(_INSERT.format(rows=", ".join([ROW[self._dialect]] * len(batch))),
                             [value for pending in batch for value in pending.values])
        stored = {(connection_id, event_id): delivery_id for delivery_id, connection_id, event_id in rows}
        duplicates = []
        for pending in batch:
            delivery_id = stored.pop((pending.values[0], pending.values[1]), None)
            if delivery_id is not None:
                pending.settle((delivery_id, False))
            else:  # stored before, or earlier in this batch
                duplicates.append(pending)
        for pending in duplicates:
            found = self._execute(COUNT_DUPLICATE[self._dialect], pending.values[:2])
            pending.settle((found[0][0] if found else None, True))

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
            return cursor.fetchall()
        except dbapi.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.002)
