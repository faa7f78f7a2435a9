"""Batched record writes with change detection by content hash, and soft deletes.

One page is written with at most three statements, whatever its size: one SELECT of
the hashes already stored, one multi-row upsert of new and changed records, and one
UPDATE marking the unchanged ones as seen by this run.
"""
from dataclasses import dataclass

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from webapp.extensions import db
from webapp.jsonutil import RawJSON, canonical, content_hash
from webapp.models import Record, utcnow


@dataclass
class PageCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def _insert(dialect_name):
    if dialect_name == "postgresql":
        return postgresql.insert(Record.__table__)
    if dialect_name == "sqlite":
        return sqlite.insert(Record.__table__)
    raise RuntimeError(f"unsupported database dialect {dialect_name!r}")


def write_page(session, *, connection_id, stream, run_id, keyed_records):
    """Upsert [(external_id, record_dict)] of one stream. Does not commit: the caller commits
    together with the run's checkpoint, so a page and its checkpoint land or vanish together."""
    counts = PageCounts()
    if not keyed_records:
        return counts
    rows = {}
    for key, record in keyed_records:  # a key repeated within a page: the last copy wins
        text = canonical(record)
        rows[key] = (RawJSON(text), content_hash(text))
    existing = {
        ext_id: (row_id, stored_hash, deleted_at)
        for ext_id, row_id, stored_hash, deleted_at in session.execute(
            select(Record.external_id, Record.id, Record.content_hash, Record.deleted_at).where(
                Record.connection_id == connection_id,
                Record.stream == stream,
                Record.external_id.in_(list(rows)),
            )
        )
    }
    now = utcnow()
    upserts, unchanged_ids = [], []
    for key, (data, digest) in rows.items():
        found = existing.get(key)
        if found is not None and found[1] == digest and found[2] is None:
            unchanged_ids.append(found[0])
            continue
        if found is None:
            counts.created += 1
        else:
            counts.updated += 1  # changed content, or a soft-deleted record that came back
        upserts.append(
            {
                "connection_id": connection_id,
                "stream": stream,
                "external_id": key,
                "data": data,
                "content_hash": digest,
                "first_seen_at": now,
                "last_changed_at": now,
                "deleted_at": None,
                "last_run_id": run_id,
                "last_seen_run_id": run_id,
            }
        )
    counts.unchanged = len(unchanged_ids)
    if upserts:
        # ON CONFLICT, not a plain INSERT: a webhook's record run may have stored the same
        # record since our SELECT. first_seen_at is kept from the original row.
        stmt = _insert(session.get_bind().dialect.name)
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["connection_id", "stream", "external_id"],
            set_={
                "data": excluded.data,
                "content_hash": excluded.content_hash,
                "last_changed_at": excluded.last_changed_at,
                "deleted_at": None,
                "last_run_id": excluded.last_run_id,
                "last_seen_run_id": excluded.last_seen_run_id,
            },
        )
        session.execute(stmt, upserts)
    if unchanged_ids:
        session.execute(
            update(Record)
            .where(Record.id.in_(bindparam("ids", expanding=True)))
            .values(last_seen_run_id=run_id)
            .execution_options(synchronize_session=False),
            {"ids": unchanged_ids},
        )
    return counts


def soft_delete_unseen(session, *, connection_id, stream, run_id):
    """After a successful full sync: records of the stream this run did not see are gone
    at the provider. Returns how many were marked deleted. Does not commit."""
    result = session.execute(
        update(Record)
        .where(
            Record.connection_id == connection_id,
            Record.stream == stream,
            Record.deleted_at.is_(None),
            (Record.last_seen_run_id != run_id) | Record.last_seen_run_id.is_(None),
        )
        .values(deleted_at=utcnow(), last_run_id=run_id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def soft_delete_one(session, *, connection_id, stream, external_id, run_id):
    """A provider told us one record is gone (a delete webhook). Does not commit."""
    result = session.execute(
        update(Record)
        .where(Record.connection_id == connection_id, Record.stream == stream,
               Record.external_id == external_id, Record.deleted_at.is_(None))
        .values(deleted_at=utcnow(), last_run_id=run_id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
