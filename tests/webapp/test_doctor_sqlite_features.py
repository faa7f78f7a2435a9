"""`flask sync doctor` names an SQLite build that lacks what the record store uses (worker/store.py)."""
import pytest

from webapp.doctor import check_database, missing_sqlite_features


def test_an_sqlite_without_what_the_record_store_uses_is_named():
    assert missing_sqlite_features((3, 40, 1), True) == ""
    assert missing_sqlite_features((3, 31, 1), True) == "RETURNING (SQLite 3.35)"
    assert missing_sqlite_features((3, 45, 0), False) == "the JSON functions (json_each)"
    assert missing_sqlite_features((3, 8, 0), False) == "RETURNING (SQLite 3.35) and the JSON functions (json_each)"


@pytest.mark.parametrize("app", ["sqlite"], indirect=True)
def test_this_machines_sqlite_has_what_the_record_store_uses(app):
    ok, message = check_database()
    assert ok, message
    assert "migrations current" in message
