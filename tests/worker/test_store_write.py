"""store.write_page: the database decides, record by record, what each record of a page became."""
import sqlite3

import psycopg
import pytest
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Record, utcnow
from worker import store


def _write(connection_id, run_id, records, **kwargs):
    return store.write_page(db.session, connection_id=connection_id, stream="items", run_id=run_id,
                            keyed_records=[(str(r["id"]), r) for r in records], **kwargs)


def _stored(connection_id):
    db.session.expire_all()
    return {r.external_id: r for r in db.session.scalars(select(Record).where(Record.connection_id == connection_id))}


# expect_new: the page written as a first import's (SQLite inserts first, then classifies if any was stored).
@pytest.mark.parametrize("expect_new", [False, True])
def test_a_page_mixing_new_changed_unchanged_and_returning_records_is_counted_exactly(app, make_connection, expect_new):
    conn = make_connection(name="mixed")
    counts = _write(conn.id, 1, [{"id": i, "v": 0} for i in range(1, 6)], expect_new=expect_new)
    assert (counts.created, counts.updated, counts.unchanged) == (5, 0, 0)
    db.session.commit()
    db.session.execute(Record.__table__.update().where(Record.external_id == "5").values(deleted_at=utcnow()))
    db.session.commit()
    before = {key: (r.first_seen_at, r.last_changed_at, r.content_hash) for key, r in _stored(conn.id).items()}

    # 1-2 unchanged, 3 changed, 4 not in the page, 5 came back unchanged after a soft delete, 6-7 new.
    counts = _write(conn.id, 2, [{"id": 1, "v": 0}, {"id": 2, "v": 0}, {"id": 3, "v": 1}, {"id": 5, "v": 0},
                                 {"id": 6, "v": 0}, {"id": 7, "v": 0}], expect_new=expect_new)
    db.session.commit()
    assert (counts.created, counts.updated, counts.unchanged) == (2, 2, 2)
    rows = _stored(conn.id)
    for key in ("1", "2"):  # unchanged: only "seen by run 2" moves
        assert (rows[key].first_seen_at, rows[key].last_changed_at, rows[key].content_hash) == before[key]
        assert (rows[key].last_run_id, rows[key].last_seen_run_id) == (1, 2)
    assert rows["3"].data == {"id": 3, "v": 1} and rows["3"].last_changed_at > before["3"][1]
    assert rows["3"].first_seen_at == before["3"][0] and (rows["3"].last_run_id, rows["3"].last_seen_run_id) == (2, 2)
    assert rows["4"].last_seen_run_id == 1
    assert rows["5"].deleted_at is None and rows["5"].last_run_id == 2 and rows["5"].last_changed_at > before["5"][1]
    assert rows["6"].first_seen_at == rows["6"].last_changed_at and rows["6"].last_run_id == 2


def test_a_key_the_same_run_wrote_on_an_earlier_page_is_unchanged_not_updated(app, make_connection):
    conn = make_connection(name="repeat")
    assert _write(conn.id, 7, [{"id": 1}, {"id": 2}], expect_new=True).created == 2
    db.session.commit()
    # offset paging shifted by one insert; the engine expects new records after an all-new page
    counts = _write(conn.id, 7, [{"id": 2}, {"id": 3}], expect_new=True)
    assert (counts.created, counts.updated, counts.unchanged) == (1, 0, 1)
    counts = _write(conn.id, 7, [{"id": 3, "x": 1}])
    assert (counts.created, counts.updated, counts.unchanged) == (0, 1, 0)


def test_a_page_that_fails_mid_statement_writes_none_of_its_records(app, make_connection):
    conn = make_connection(name="atomic")
    _write(conn.id, 1, [{"id": 1, "v": 0}])
    db.session.commit()
    rows = store.prepare_rows([("1", {"id": 1, "v": 1}), ("2", {"id": 2})])
    # A record the database refuses (data is NOT NULL), mid-page: SQLite reads JSON null as NULL.
    rows["3"] = ("null" if db.engine.dialect.name == "sqlite" else None, "0" * 32)
    rows.update(store.prepare_rows([("4", {"id": 4})]))
    # The driver's own error: the store talks to the driver directly on this path.
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.write_page(db.session, connection_id=conn.id, stream="items", run_id=2, rows=rows)
    db.session.rollback()
    assert set(_stored(conn.id)) == {"1"}
    assert _stored(conn.id)["1"].data == {"id": 1, "v": 0}


@pytest.mark.parametrize("app", ["sqlite"], indirect=True)  # a limit of SQLite's
def test_a_page_larger_than_sqlites_placeholder_limit_is_written_and_counted(app, make_connection):
    conn = make_connection(name="big")
    raw = db.session.connection().connection.dbapi_connection
    previous = raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)  # 12 records a statement
    try:
        assert _write(conn.id, 1, [{"id": i} for i in range(20)]).created == 20
        counts = _write(conn.id, 2, [{"id": i} if i < 10 else {"id": i, "v": 1} for i in range(30)])
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, previous)
    assert (counts.created, counts.updated, counts.unchanged) == (10, 10, 10)
    db.session.commit()
    assert len(_stored(conn.id)) == 30


@pytest.mark.parametrize("expect_new", [False, True])
def test_records_and_keys_of_any_json_shape_are_stored_as_sent_and_found_unchanged_again(
        app, make_connection, expect_new):
    # SQLite reads a page as one JSON document (worker/store.py): quotes, escapes, non-ASCII,
    # numbers beyond 64 bits and keys that look like JSON must come back as they went in.
    conn = make_connection(name="shapes")
    records = {
        'a "quoted" key': {"text": 'line\nbreak \\ "quote" \u2028 é 漢字 \U0001f600', "empty": ""},
        "{\"looks\": [\"like json\"]}": {"nested": {"list": [1, 2.5, -0.0, None, True, {"deep": []}]}},
        "big": {"n": 123456789012345678901234567890, "f": 1.5e300, "small": 1e-300},
        "é/键": {"unicode_key": "ok", "🙂": 1},
        "": {"empty_key": True},
    }
    pairs = list(records.items())
    counts = store.write_page(db.session, connection_id=conn.id, stream="items", run_id=1,
                              keyed_records=pairs, expect_new=expect_new)
    db.session.commit()
    assert counts.created == len(records)
    stored = _stored(conn.id)
    assert {key: row.data for key, row in stored.items()} == records
    again = store.write_page(db.session, connection_id=conn.id, stream="items", run_id=2, keyed_records=pairs,
                             expect_new=expect_new)
    assert (again.created, again.updated, again.unchanged) == (0, 0, len(records))
