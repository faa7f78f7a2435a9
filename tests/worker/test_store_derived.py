"""store.soft_delete_derived: a parent's derived records are exactly those keyed "<parent>:"."""
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Record
from worker import store


def _live(connection_id):
    return set(db.session.scalars(select(Record.external_id).where(
        Record.connection_id == connection_id, Record.stream == "tickets", Record.deleted_at.is_(None))))


def test_only_surplus_records_of_the_named_parents_are_soft_deleted(app, make_connection):
    conn = make_connection(name="derived")
    keys = ["ab:p:1", "ab:p:2", "ab:q:1", "abc:p:1", "AB:p:1", "a%b:p:1", "a_b:p:1", "zz:p:1", "ab"]
    store.write_page(db.session, connection_id=conn.id, stream="tickets", run_id=1,
                     keyed_records=[(k, {"id": k}) for k in keys])
    other = make_connection(name="other")
    store.write_page(db.session, connection_id=other.id, stream="tickets", run_id=1,
                     keyed_records=[("ab:p:2", {"id": "ab:p:2"})])
    db.session.commit()
    removed = store.soft_delete_derived(db.session, connection_id=conn.id, stream="tickets", run_id=2,
                                        parent_keys=["ab", "a%b", "zz"], keep_keys=["ab:p:1", "zz:p:1"])
    db.session.commit()
    # "abc", "AB" and "a_b" are other parents (no prefix, case or LIKE-wildcard confusion);
    # the parent record "ab" itself is not one of its derived records.
    assert removed == 3
    assert _live(conn.id) == {"ab:p:1", "abc:p:1", "AB:p:1", "a_b:p:1", "zz:p:1", "ab"}
    assert _live(other.id) == {"ab:p:2"}
    assert store.soft_delete_derived(db.session, connection_id=conn.id, stream="tickets", run_id=3,
                                     parent_keys=[], keep_keys=[]) == 0
