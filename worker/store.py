"""Batched record writes with change detection by content hash, and soft deletes.

One page is written with at most three statements, whatever its size: one SELECT of
the hashes already stored, one upsert of the new and changed records, and one UPDATE
marking the unchanged ones as seen by this run. The upsert is the hot path, so it goes
straight to the driver: on PostgreSQL as a single INSERT ... SELECT FROM unnest(arrays),
on SQLite as one executemany (sqlite3 loops in C). SQLAlchemy's per-row parameter
processing would otherwise cost more than the database work itself.
"""
import json
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import bindparam, func, or_, update

from webapp.jsonutil import canonical, content_hash
from webapp.models import Record, utcnow

_T = Record.__table__  # Core, not ORM: no identity map or unit of work on the hot path

# ON CONFLICT, not a plain INSERT: a webhook's record run may have stored the same record
# since our SELECT. first_seen_at is kept from the original row.
_ON_CONFLICT = """
ON CONFLICT (connection_id, stream, external_id) DO UPDATE SET
    data = excluded.data, content_hash = excluded.content_hash, last_changed_at = excluded.last_changed_at,
    deleted_at = NULL, last_run_id = excluded.last_run_id, last_seen_run_id = excluded.last_seen_run_id"""

_UPSERT_POSTGRESQL = """
INSERT INTO records (connection_id, stream, external_id, data, content_hash, first_seen_at, last_changed_at,
                     deleted_at, last_run_id, last_seen_run_id)
SELECT %s, %s, e->>0, e->1, e->>2, %s, %s, NULL, %s, %s
FROM json_array_elements(%s::json) AS e""" + _ON_CONFLICT

_UPSERT_SQLITE = """
INSERT INTO records (connection_id, stream, external_id, data, content_hash, first_seen_at, last_changed_at,
                     deleted_at, last_run_id, last_seen_run_id)
VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)""" + _ON_CONFLICT


@dataclass
class PageCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def prepare_rows(keyed_records):
    """{external_id: (canonical JSON text, content hash)} for [(external_id, record_dict)]:
    the CPU half of write_page, which the engine runs in its fetch thread while the
    previous page is being written (docs/PERFORMANCE.md)."""
    rows = {}
    for key, record in keyed_records:  # a key repeated within a page: the last copy wins
        text = canonical(record)
        rows[key] = (text, content_hash(text))
    return rows


def write_page(session, *, connection_id, stream, run_id, keyed_records=None, rows=None):
    """Upsert [(external_id, record_dict)] of one stream, or the `rows` prepare_rows made of
    them. Does not commit: the caller commits together with the run's checkpoint, so a page
    and its checkpoint land or vanish together."""
    counts = PageCounts()
    if rows is None:
        rows = prepare_rows(keyed_records or ())
    if not rows:
        return counts
    existing = _existing(session, connection_id, stream, list(rows))
    changed, unchanged_ids = [], []
    for key, (data, digest) in rows.items():
        found = existing.get(key)
        if found is not None and found[1] == digest and not found[2]:
            unchanged_ids.append(found[0])
            continue
        if found is None:
            counts.created += 1
        else:
            counts.updated += 1  # changed content, or a soft-deleted record that came back
        changed.append((key, data, digest))
    counts.unchanged = len(unchanged_ids)
    if changed:
        _upsert(session, connection_id, stream, run_id, changed)
    if unchanged_ids:
        session.execute(
            update(_T).where(_T.c.id.in_(bindparam("ids", expanding=True))).values(last_seen_run_id=run_id),
            {"ids": unchanged_ids},
        )
    return counts


_EXISTING_POSTGRESQL = """
SELECT r.external_id, r.id, r.content_hash, r.deleted_at IS NOT NULL
FROM json_array_elements_text(%s::json) AS k(external_id)
CROSS JOIN LATERAL (
    SELECT id, external_id, content_hash, deleted_at FROM records
    WHERE connection_id = %s AND stream = %s AND external_id = k.external_id
    LIMIT 1
) AS r"""


def _existing(session, connection_id, stream, keys):
    """{external_id: (id, content_hash, is_deleted)} for the keys already stored."""
    if session.get_bind().dialect.name == "postgresql":
        # One index probe per key (LATERAL ... LIMIT 1 cannot be flattened into a join),
        # not `IN (...)` or a plain join: while a big first sync outruns autovacuum's
        # statistics, PostgreSQL plans those as a scan of the whole stream per page
        # (quadratic in the stream's size); the probes stay O(page x log n) whatever the
        # statistics say.
        cursor = _cursor(session)
        cursor.execute(_EXISTING_POSTGRESQL, (json.dumps(keys), connection_id, stream))
    else:
        placeholders = ",".join("?" * len(keys))
        cursor = _cursor(session)
        cursor.execute("SELECT external_id, id, content_hash, deleted_at IS NOT NULL FROM records "  # noqa: S608  only "?" placeholders are formatted in
                       f"WHERE connection_id = ? AND stream = ? AND external_id IN ({placeholders})",
                       (connection_id, stream, *keys))
    return {ext_id: (row_id, digest, bool(deleted)) for ext_id, row_id, digest, deleted in cursor.fetchall()}


def _cursor(session):
    """A DBAPI cursor on the session's own connection, inside its transaction."""
    return session.connection().connection.cursor()


def _upsert(session, connection_id, stream, run_id, changed):
    dialect = session.get_bind().dialect.name
    cursor = _cursor(session)
    now = utcnow()
    if dialect == "postgresql":
        # The page travels as one JSON array of [key, record, hash] triples: the records are
        # already JSON text, so this is string joining, with no per-value escaping by the driver.
        page = "[" + ",".join(f"[{json.dumps(key)},{data},\"{digest}\"]" for key, data, digest in changed) + "]"
        cursor.execute(_UPSERT_POSTGRESQL, (connection_id, stream, now, now, run_id, run_id, page))
    elif dialect == "sqlite":
        # The text form SQLAlchemy's SQLite DateTime type writes and reads back.
        stamp = now.isoformat(sep=" ", timespec="microseconds")
        cursor.executemany(_UPSERT_SQLITE, [(connection_id, stream, key, data, digest, stamp, stamp, run_id, run_id)
                                            for key, data, digest in changed])
    else:
        raise RuntimeError(f"unsupported database dialect {dialect!r}")


def soft_delete_unseen(session, *, connection_id, stream, run_id):
    """After a successful full sync: records of the stream this run did not see are gone
    at the provider. Returns how many were marked deleted. Does not commit."""
    result = session.execute(
        update(_T)
        .where(
            _T.c.connection_id == connection_id,
            _T.c.stream == stream,
            _T.c.deleted_at.is_(None),
            (_T.c.last_seen_run_id != run_id) | _T.c.last_seen_run_id.is_(None),
        )
        .values(deleted_at=utcnow(), last_run_id=run_id)
    )
    return result.rowcount


def soft_delete_one(session, *, connection_id, stream, external_id, run_id):
    """A provider told us one record is gone (a delete webhook). Does not commit."""
    result = session.execute(
        update(_T)
        .where(_T.c.connection_id == connection_id, _T.c.stream == stream,
               _T.c.external_id == external_id, _T.c.deleted_at.is_(None))
        .values(deleted_at=utcnow(), last_run_id=run_id)
    )
    return result.rowcount


def soft_delete_derived(session, *, connection_id, stream, run_id, parent_keys, keep_keys):
    """Records of derived `stream` belong to the parent their key starts with ("<parent>:").
    Soft-delete those of `parent_keys` not in `keep_keys` (a lowered quantity leaves surplus
    tickets; a deleted order leaves none). Returns how many. Does not commit."""
    if not parent_keys:
        return 0
    # substr() = prefix, not LIKE: exact and case-sensitive on both databases, whatever the
    # key contains. Grouped by prefix length, so each group is one IN list.
    prefixes = defaultdict(set)
    for key in parent_keys:
        prefixes[len(key) + 1].add(f"{key}:")
    owned = or_(*(func.substr(_T.c.external_id, 1, length).in_(sorted(group))
                  for length, group in prefixes.items()))
    query = update(_T).where(_T.c.connection_id == connection_id, _T.c.stream == stream,
                             _T.c.deleted_at.is_(None), owned)
    if keep_keys:
        query = query.where(_T.c.external_id.not_in(list(keep_keys)))
    return session.execute(query.values(deleted_at=utcnow(), last_run_id=run_id)).rowcount
