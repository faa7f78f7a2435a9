"""Publishing: an app event written into the outbox inside the caller's transaction.

One app event becomes one row per provider action (a Loops contact upsert, an event
send), each with its own ordering key (the contact) and its own idempotency key, derived
from the app's: `<app key>.<n>`. Sending a row is then a single request, so at-least-once
needs nothing more than the provider's idempotency or the action's own (an upsert of the
same properties is harmless twice). docs/OUTBOX.md, "One app event, several rows".

Nothing is sent before the caller commits; the after-commit hook below then asks for the
real-time attempt (enqueue.py).
"""
import re
import uuid
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from ..connectors.errors import ConfigError
from ..models import Connection, OutboxEvent, utcnow
from .enqueue import request_sending
from .statuses import PENDING

MAX_TYPE = 100
MAX_KEY = 255
# Row keys are "<app key>.<n>" and Loops takes at most 100 characters.
MAX_IDEMPOTENCY_KEY = 80
_SESSION_KEY = "synchub_outbox_new_event_ids"
_DESTINATIONS_KEY = "synchub_outbox_destinations"


class PublishError(ValueError):
    """The event was refused (bad fields, no destination, a mapping it cannot satisfy).
    Nothing was written."""


class NoDestination(PublishError):
    """Refused for what is configured, not for what the event says: no destination maps
    its type, or the connection it names is unknown or not an outbound destination."""


@dataclass
class Published:
    ids: list  # the outbox rows of this event (the existing ones for a duplicate)
    duplicate: bool = False


def publish(session, type, key, payload, idempotency_key=None, connection=None):
    """Write an app event into the outbox inside the caller's transaction (no commit), in
    the app's context (its settings).

    It is expanded right away, through each destination's mapping rules, into one row per
    provider action; nothing is sent before the caller commits, and a real-time attempt
    is enqueued after that commit. `connection` (a Connection, id or name) picks one
    destination; by default every enabled destination whose mappings know `type`.
    A second publish with the same `idempotency_key` is accepted and changes nothing.
    """
    _check(type, key, payload, idempotency_key, connection)
    base = idempotency_key or uuid.uuid4().hex
    values = _rows(session, type, key, payload, base, connection)
    inserted = session.execute(_insert_ignoring_duplicates(session, values)
                               .returning(OutboxEvent.id, OutboxEvent.connection_id)).all()
    if not inserted:
        return Published(_rows_of(session, base), duplicate=True)
    session.info.setdefault(_SESSION_KEY, {}).update(dict(inserted))
    return Published(sorted(event_id for event_id, _ in inserted))


def publish_many(session, events):
    """Several app events of one transaction at once: `events` is [(type, key, payload,
    idempotency_key)], each with its idempotency key, to every destination that maps its
    type. The rows go in with one multi-row INSERT per page of rows rather than one per
    event (webapp/alerts.py opens thousands of alerts in one step; docs/PERFORMANCE.md,
    "Supervisor scale"). All or nothing: a refused event refuses the lot, as publish()
    would. Returns the ids of the rows written (duplicates of earlier events are left out)."""
    values = []
    for type, key, payload, idempotency_key in events:
        if idempotency_key is None:
            raise PublishError("publish_many needs an idempotency_key per event")
        _check(type, key, payload, idempotency_key)
        values += _rows(session, type, key, payload, idempotency_key, None)
    if not values:
        return []
    # A parameter list, not .values(rows): SQLAlchemy's "insertmanyvalues" compiles the
    # statement once and sends it as multi-row INSERTs in pages of its own size, where
    # .values(rows) compiled a statement of every row afresh (most of the time at 10,000).
    table = OutboxEvent.__table__
    inserted = session.execute(_dialect_insert(session, table).on_conflict_do_nothing(index_elements=["idempotency_key"])
                               .returning(table.c.id, table.c.connection_id), values).all()
    if inserted:
        session.info.setdefault(_SESSION_KEY, {}).update(dict(inserted))
    return sorted(event_id for event_id, _ in inserted)


def _rows(session, type, key, payload, base, connection):
    """The outbox rows of one app event, one per provider action of each destination."""
    rows = []
    for destination_id, connector, settings in _cached_destinations(session, type, connection):
        try:
            actions = connector.plan(settings, type, key, payload)
        except ConfigError as exc:
            raise PublishError(str(exc)) from None
        for action in actions:
            rows.append({"connection_id": destination_id, "key": action["key"], "payload": action["payload"]})
    if not rows:
        raise NoDestination(f"no destination maps event type {type!r}"
                            + (" for that connection" if connection is not None else ""))
    now = utcnow()
    max_attempts = current_app.config["OUTBOX_MAX_ATTEMPTS"]
    return [
        {**row, "type": type, "idempotency_key": f"{base}.{n}", "status": PENDING, "attempts": 0,
         "max_attempts": max_attempts, "next_attempt_at": now, "created_at": now, "updated_at": now}
        for n, row in enumerate(rows)
    ]


def _rows_of(session, base):
    """Ids of the rows published under this app idempotency key (`<base>.<n>`). LIKE finds
    the candidates (case-insensitively on SQLite); the exact test is done here."""
    found = session.execute(select(OutboxEvent.id, OutboxEvent.idempotency_key)
                            .where(OutboxEvent.idempotency_key.like(_like_escape(base) + ".%", escape="\\"))
                            .order_by(OutboxEvent.id)).all()
    prefix = base + "."
    return [row_id for row_id, key in found if key.startswith(prefix) and key[len(prefix):].isdigit()]


def _check(type, key, payload, idempotency_key, connection=None):
    if connection is not None and (isinstance(connection, bool) or not isinstance(connection, (str, int, Connection))):
        raise PublishError("connection must be a connection id or name")
    for name, value in (("type", type), ("key", key), ("idempotency_key", idempotency_key), ("connection", connection)):
        if isinstance(value, str) and "\x00" in value:  # text columns (PostgreSQL) cannot hold it
            raise PublishError(f"{name} must not contain NUL characters")
    if not isinstance(type, str) or not type.strip() or len(type) > MAX_TYPE:
        raise PublishError(f"type must be a non-empty string of at most {MAX_TYPE} characters")
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise PublishError(f"key must be a non-empty string of at most {MAX_KEY} characters")
    if not isinstance(payload, dict):
        raise PublishError("payload must be a JSON object")
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key.strip()
                                        or len(idempotency_key) > MAX_IDEMPOTENCY_KEY):
        raise PublishError(f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} characters")


def _cached_destinations(session, type, connection):
    # An app publishing many events in one transaction looks its destinations up once.
    cache = session.info.setdefault(_DESTINATIONS_KEY, {})
    key = (type, connection.id if isinstance(connection, Connection) else connection)
    if key not in cache:
        cache[key] = _destinations(session, type, connection)
    return cache[key]


def _destinations(session, type, connection):
    """[(connection id, connector class, settings)] for this event type.

    Read on a connection of its own, outside the caller's transaction: on SQLite a
    transaction that reads before it writes can be refused its write when another process
    committed in between, and the caller's transaction must not be put at that risk."""
    from ..connectors import connector_class

    query = select(Connection.id, Connection.name, Connection.connector, Connection.settings,
                   Connection.enabled).order_by(Connection.id)
    if connection is not None:
        if isinstance(connection, Connection):
            query = query.where(Connection.id == connection.id)
        elif isinstance(connection, int) or (str(connection).isascii() and str(connection).isdigit()):
            if not 0 <= int(connection) <= 2**31 - 1:  # ids are 32-bit: a bigger one is no connection
                raise NoDestination(f"no connection {connection!r}")
            query = query.where(Connection.id == int(connection))
        else:
            query = query.where(Connection.name == str(connection))
    with session.get_bind().connect() as conn:
        found = conn.execute(query).all()
    if connection is not None and not found:
        name = connection.name if isinstance(connection, Connection) else connection
        raise NoDestination(f"no connection {name!r}")
    destinations = []
    for row in found:
        try:
            cls = connector_class(row.connector)
        except ConfigError:
            continue
        if not hasattr(cls, "plan"):
            if connection is not None:
                raise NoDestination(f"connection {row.name!r} ({row.connector}) is not an outbound destination")
            continue
        if connection is None and not row.enabled:
            continue
        destinations.append((row.id, cls, row.settings or {}))
    return destinations


def _insert_ignoring_duplicates(session, values):
    return _dialect_insert(session, OutboxEvent).values(values).on_conflict_do_nothing(index_elements=["idempotency_key"])


def _dialect_insert(session, target):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise ConfigError(f"the outbox supports SQLite and PostgreSQL, not {dialect}")
    return dialect_insert(target)


def _like_escape(text):
    return re.sub(r"([\\%_])", r"\\\1", text)


@event.listens_for(Session, "after_commit")
def _after_commit(session):
    session.info.pop(_DESTINATIONS_KEY, None)
    new = session.info.pop(_SESSION_KEY, None)
    if new:
        request_sending(min(new), destinations=set(new.values()))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session):
    session.info.pop(_SESSION_KEY, None)  # rolled back: those rows never existed
    session.info.pop(_DESTINATIONS_KEY, None)
