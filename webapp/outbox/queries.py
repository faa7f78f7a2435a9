"""What people and apps read and do with outbox rows: counts, lists, retry, discard, and
the JSON form of a row (the admin page, the API, `flask outbox`)."""
import logging

from sqlalchemy import delete, func, select, update

from ..models import OUTBOX_STATUSES, OutboxEvent, utcnow
from .enqueue import request_sending
from .statuses import DEAD, PENDING

log = logging.getLogger(__name__)


def counts(session):
    found = dict(session.execute(select(OutboxEvent.status, func.count()).group_by(OutboxEvent.status)).all())
    return {status: found.get(status, 0) for status in OUTBOX_STATUSES}


def filtered(query, status=None, type=None, key=None):
    if status:
        query = query.where(OutboxEvent.status == status)
    if type:
        query = query.where(OutboxEvent.type == type)
    if key:
        query = query.where(OutboxEvent.key == key)
    return query


def list_events(session, status=None, type=None, key=None, limit=50, offset=0):
    query = filtered(select(OutboxEvent), status, type, key).order_by(OutboxEvent.id.desc()).limit(limit).offset(offset)
    return session.execute(query).scalars().all()


def matching_ids(session, status=None, type=None, key=None):
    return session.execute(filtered(select(OutboxEvent.id), status, type, key).order_by(OutboxEvent.id)).scalars().all()


def retry(session, ids, now=None):
    """Dead or pending rows become due now with a fresh set of attempts; a real-time
    attempt is enqueued. Rows being sent or done are left alone. Returns the count."""
    ids = [int(i) for i in ids]
    if not ids:
        return 0
    now = now or utcnow()
    result = session.execute(
        update(OutboxEvent).where(OutboxEvent.id.in_(ids), OutboxEvent.status.in_((DEAD, PENDING)))
        .values(status=PENDING, attempts=0, next_attempt_at=now, lease_until=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount:
        log.info("outbox: %s event(s) retried", result.rowcount)
        request_sending(min(ids))
    return result.rowcount


def discard(session, ids):
    """Delete pending or dead rows (never one being sent). Returns the count."""
    ids = [int(i) for i in ids]
    if not ids:
        return 0
    result = session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids), OutboxEvent.status.in_((DEAD, PENDING)))
                             .execution_options(synchronize_session=False))
    session.commit()
    if result.rowcount:
        log.info("outbox: %s event(s) discarded", result.rowcount)
    return result.rowcount


def event_dict(row):
    return {
        "id": row.id, "connection_id": row.connection_id, "type": row.type, "key": row.key,
        "payload": row.payload, "idempotency_key": row.idempotency_key, "status": row.status,
        "attempts": row.attempts, "max_attempts": row.max_attempts,
        "next_attempt_at": _iso(row.next_attempt_at), "last_error": row.last_error,
        "created_at": _iso(row.created_at), "delivered_at": _iso(row.delivered_at),
    }


def _iso(value):
    return value.isoformat() + "Z" if value else None
