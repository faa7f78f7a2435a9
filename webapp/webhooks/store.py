"""Writing a delivery: one statement, committed on its own, before the 2xx.

Deliveries go through an engine of their own in autocommit mode: the INSERT is the whole
transaction, one round trip to the database. Through the shared session the same write
took five (the pool's pre-ping, BEGIN, INSERT, COMMIT, the reset on return) and most of a
delivery's time (bench/webhook_ingest.py). Without pre-ping a connection the database
dropped fails its first use; that statement is retried once on a fresh connection, which
is safe because the INSERT is idempotent (ON CONFLICT DO NOTHING).

SQLite takes one writer at a time and makes the others sleep in growing steps, so within
a process writers take turns on a lock instead: one waiter per process, not sixteen.
"""
import threading

from flask import current_app
from sqlalchemy import bindparam, create_engine, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from ..jsonutil import serialize
from ..models import WebhookDelivery

ENGINE_KEY = "synchub_delivery_engine"
_engine_lock = threading.Lock()
_sqlite_writer = threading.Lock()
TABLE = WebhookDelivery.__table__


def engine():
    state = current_app.extensions.get(ENGINE_KEY)
    if state is None:
        with _engine_lock:
            state = current_app.extensions.get(ENGINE_KEY)
            if state is None:
                made = create_engine(current_app.config["SQLALCHEMY_DATABASE_URI"], isolation_level="AUTOCOMMIT",
                                     json_serializer=serialize, pool_size=4, max_overflow=12)
                state = current_app.extensions[ENGINE_KEY] = made
    return state


def dispose(app):
    made = app.extensions.pop(ENGINE_KEY, None)
    if made is not None:
        made.dispose()


COLUMNS = ("connection_id", "provider_event_id", "event_type", "received_at", "headers", "raw_body", "outcome", "run_ids")


def _statements(dialect_name):
    """The two statements, built once per dialect: building them per delivery cost more
    than executing them."""
    made = _STATEMENTS.get(dialect_name)
    if made is None:
        insert = postgresql.insert(TABLE) if dialect_name == "postgresql" else sqlite.insert(TABLE)
        insert = (insert.values({name: bindparam(name, type_=TABLE.c[name].type) for name in COLUMNS})
                  .on_conflict_do_nothing(index_elements=[TABLE.c.connection_id, TABLE.c.provider_event_id])
                  .returning(TABLE.c.id))
        count = (update(TABLE).where(TABLE.c.connection_id == bindparam("of_connection"),
                                     TABLE.c.provider_event_id == bindparam("of_event"))
                 .values(duplicates=TABLE.c.duplicates + 1).returning(TABLE.c.id))
        made = _STATEMENTS[dialect_name] = (insert, count)
    return made


_STATEMENTS = {}


def insert_delivery(values):
    """Store a delivery unless its (connection, provider event id) is already stored.
    `values` has every name in COLUMNS. Returns (delivery id, duplicate?); a duplicate is
    counted on the stored one."""
    bind = engine()
    insert, count = _statements(bind.dialect.name)
    delivery_id = _execute(bind, insert, values)
    if delivery_id is not None:
        return delivery_id, False
    key = {"of_connection": values["connection_id"], "of_event": values["provider_event_id"]}
    return _execute(bind, count, key), True


def _execute(bind, statement, params, retried=False):
    writer = _sqlite_writer if bind.dialect.name == "sqlite" else None
    try:
        if writer:
            writer.acquire()
        try:
            with bind.connect() as connection:
                return connection.execute(statement, params).scalar()
        finally:
            if writer:
                writer.release()
    except DBAPIError as exc:
        if exc.connection_invalidated and not retried:
            return _execute(bind, statement, params, retried=True)
        raise
