"""Batched record writes with change detection by content hash, and soft deletes.

One page is written with one statement, whatever its size (docs/PERFORMANCE.md, "Engine
throughput"): an upsert of every record of the page that decides in the database, row by
row, whether the stored record changed (same content hash, not soft-deleted: unchanged), and
reports per row which of created, updated or unchanged it was. An unchanged record keeps
its content, timestamps and last_run_id; only last_seen_run_id moves to this run (the full
sync's soft delete needs it). The statement goes straight to the driver: on PostgreSQL as
one INSERT ... SELECT FROM unnest(three text arrays sent in binary, so nothing is escaped)
with the counts added up in the same statement, on SQLite as one INSERT ... SELECT FROM
json_each(the page as one JSON object) with RETURNING. SQLAlchemy's per-row parameter
processing would otherwise cost more than the database work itself. On SQLite a page
expected to be all new (a first import) is first inserted alone, without RETURNING: in
process there is no round trip to save, and RETURNING a row per record was a third of the
upsert's time.
"""
from collections import defaultdict
from dataclasses import dataclass

import orjson
from sqlalchemy import func, or_, select, update

from webapp.jsonutil import canonical_with_hash
from webapp.models import Record, utcnow

_T = Record.__table__  # Core, not ORM: no identity map or unit of work on the hot path

_COLUMNS = """INSERT INTO records (connection_id, stream, external_id, data, content_hash, first_seen_at,
                     last_changed_at, deleted_at, last_run_id, last_seen_run_id)"""

# ON CONFLICT, not a plain INSERT: a webhook's record run may store the same record
# meanwhile. A stored record with the same hash and not soft-deleted is unchanged: its
# content, last_changed_at and last_run_id stay. first_seen_at is always the original's.
_SAME = "(records.content_hash = excluded.content_hash AND records.deleted_at IS NULL)"
_ON_CONFLICT = f"""
ON CONFLICT (connection_id, stream, external_id) DO UPDATE SET
    data = CASE WHEN {_SAME} THEN records.data ELSE excluded.data END,
    content_hash = excluded.content_hash,
    last_changed_at = CASE WHEN {_SAME} THEN records.last_changed_at ELSE excluded.last_changed_at END,
    deleted_at = NULL,
    last_run_id = CASE WHEN {_SAME} THEN records.last_run_id ELSE excluded.last_run_id END,
    last_seen_run_id = excluded.last_seen_run_id"""

# What each row became, from the row as written: this call's timestamp (`now`) with this
# run as last_run_id in first_seen_at means inserted, in last_changed_at means written.
# The run id rules out another writer's row stamped in the same microsecond, the timestamp
# a record an earlier page of this run wrote (a key repeated across pages: unchanged here).
_CREATED = "(first_seen_at = {now} AND last_run_id = {run})"
_CHANGED = "(last_changed_at = {now} AND last_run_id = {run})"

_UPSERT_POSTGRESQL = f"""
WITH written AS (
    {_COLUMNS}
    SELECT %(connection_id)s, %(stream)s, page.external_id, page.data::json, page.content_hash,
           %(now)s, %(now)s, NULL, %(run_id)s, %(run_id)s
    FROM unnest(%(keys)b::text[], %(data)b::text[], %(hashes)b::text[]) AS page(external_id, data, content_hash)
    {_ON_CONFLICT}
    RETURNING {_CREATED.format(now="%(now)s", run="%(run_id)s")} AS created,
              {_CHANGED.format(now="%(now)s", run="%(run_id)s")} AS changed
)
SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE changed AND NOT created),
       count(*) FILTER (WHERE NOT changed)
FROM written"""  # noqa: S608  constant SQL fragments of this module; every value is a bound parameter


# SQLite gets the whole page as one JSON object parameter, {hash + key: record, ...}, which
# it reads with json_each: one fixed statement whatever the page size (a VALUES list of
# 1,000 records took 13-19 ms to prepare), and the insert runs in one call with Python's
# lock released, so the fetch thread prepares the next page meanwhile. The hash leads the
# member's name (content_hash's 32 hex digits) so that no row needs a JSON lookup: three
# json_extract calls a row were a third of the statement's time (docs/PERFORMANCE.md).
# `WHERE true` is SQLite's rule for INSERT ... SELECT ... ON CONFLICT (a parsing ambiguity).
_HASH_CHARS = 32
_PAGE_SQLITE = f"""
    SELECT ?1, ?2, substr(key, {_HASH_CHARS + 1}), value, substr(key, 1, {_HASH_CHARS}), ?3, ?3, NULL, ?4, ?4
    FROM json_each(?5) WHERE true"""  # noqa: S608  a constant length and numbered placeholders; values are bound

# RETURNING says per row 2 (created), 1 (updated) or 0 (unchanged).
_UPSERT_SQLITE = f"""{_COLUMNS}{_PAGE_SQLITE}
    {_ON_CONFLICT}
    RETURNING {_CREATED.format(now="?3", run="?4")} + {_CHANGED.format(now="?3", run="?4")}"""  # noqa: S608  constant fragments and numbered placeholders; values are bound

# The insert alone, for pages expected to be all new (see _write_sqlite).
_INSERT_NEW_SQLITE = f"{_COLUMNS}{_PAGE_SQLITE} ON CONFLICT DO NOTHING"


@dataclass
class PageCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


class Rows(dict):
    """{external_id: (canonical JSON text, content hash)}; for SQLite also the page as the
    JSON object its statement reads, when prepare_rows was asked for it."""

    sqlite_page = None


def prepare_rows(keyed_records, for_sqlite=False):
    """Rows for [(external_id, record_dict)]: the CPU half of write_page, which the engine
    runs in its fetch thread while the previous page is being written (docs/PERFORMANCE.md)."""
    rows = Rows()
    for key, record in keyed_records:  # a key repeated within a page: the last copy wins
        rows[key] = canonical_with_hash(record)
    if for_sqlite:
        rows.sqlite_page = _page_json(rows)
    return rows


def write_page(session, *, connection_id, stream, run_id, keyed_records=None, rows=None, expect_new=False):
    """Upsert [(external_id, record_dict)] of one stream, or the `rows` prepare_rows made of
    them; returns how many were created, updated and unchanged. Does not commit: the caller
    commits together with the run's checkpoint, so a page and its checkpoint land or vanish
    together. `expect_new`: the records are probably not stored yet (the run's previous page
    of the stream was all new), which SQLite can write more cheaply."""
    if rows is None:
        rows = prepare_rows(keyed_records or ())
    if not rows:
        return PageCounts()
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return _write_postgresql(session, connection_id, stream, run_id, rows)
    if dialect == "sqlite":
        return _write_sqlite(session, connection_id, stream, run_id, rows, expect_new)
    raise RuntimeError(f"unsupported database dialect {dialect!r}")


def _cursor(session):
    """A DBAPI cursor on the session's own connection, inside its transaction."""
    return session.connection().connection.cursor()


def _write_postgresql(session, connection_id, stream, run_id, rows):
    data, hashes = [], []
    for text, digest in rows.values():
        data.append(text)
        hashes.append(digest)
    cursor = _cursor(session)
    cursor.execute(_UPSERT_POSTGRESQL, {"connection_id": connection_id, "stream": stream, "now": utcnow(),
                                        "run_id": run_id, "keys": list(rows), "data": data, "hashes": hashes})
    created, updated, unchanged = cursor.fetchone()
    return PageCounts(created=created, updated=updated, unchanged=unchanged)


def _write_sqlite(session, connection_id, stream, run_id, rows, expect_new=False):
    cursor = _cursor(session)
    # The text form SQLAlchemy's SQLite DateTime type writes and reads back.
    stamp = utcnow().isoformat(sep=" ", timespec="microseconds")
    page = getattr(rows, "sqlite_page", None) or _page_json(rows)
    if expect_new:
        # A first import: the insert alone (RETURNING a row per record was a third of the
        # upsert's time). If any record was stored already, the upsert below classifies the
        # whole page, counting those just inserted as created (their first_seen_at is `stamp`).
        cursor.execute(_INSERT_NEW_SQLITE, (connection_id, stream, stamp, run_id, page))
        if cursor.rowcount == len(rows):
            return PageCounts(created=len(rows))
    outcomes = [0, 0, 0]  # unchanged, updated, created
    for (outcome,) in cursor.execute(_UPSERT_SQLITE, (connection_id, stream, stamp, run_id, page)).fetchall():
        outcomes[outcome] += 1
    return PageCounts(created=outcomes[2], updated=outcomes[1], unchanged=outcomes[0])


def _page_json(rows):
    """{hash + key: record, ...} as JSON text, with the canonical texts as they are (they are
    JSON already; SQLite stores each record's text as it reads it)."""
    return "{" + ",".join(f"{orjson.dumps(digest + key).decode()}:{text}" for key, (text, digest) in rows.items()) + "}"


def has_live_records(session, *, connection_id, stream):
    """Whether the stream has a record stored and not soft-deleted."""
    query = select(_T.c.id).where(_T.c.connection_id == connection_id, _T.c.stream == stream,
                                  _T.c.deleted_at.is_(None)).limit(1)
    return session.execute(query).first() is not None


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
