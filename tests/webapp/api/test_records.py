"""GET /api/connections/<key>/streams/<stream>/records: a changes feed over synced records."""
import pytest

from webapp import runs
from webapp.extensions import db
from webapp.models import Connection
from worker.engine import execute_run


@pytest.fixture(autouse=True)
def _no_settle_window(app):
    app.config["RECORDS_FEED_SETTLE_SECONDS"] = 0


def _sync(connection):
    run = runs.trigger(connection, enqueue=False).run
    assert execute_run(run.id) == "completed"


def _feed(client, auth, since=None, limit=50):
    url = f"/api/connections/shop/streams/items/records?limit={limit}" + (f"&since={since}" if since else "")
    response = client.get(url, headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_feed_returns_changes_after_the_cursor_once(client, auth, make_connection):
    connection = make_connection(name="shop", settings={"records": 5, "page_size": 5})
    _sync(connection)
    first = _feed(client, auth, limit=3)
    assert [(r["id"], r["change"]) for r in first["records"]] == [(f"item-{n:07d}", "created") for n in range(3)]
    assert first["has_more"] is True
    rest = _feed(client, auth, since=first["next_cursor"])
    assert [r["id"] for r in rest["records"]] == [f"item-{n:07d}" for n in range(3, 5)] and rest["has_more"] is False
    idle = _feed(client, auth, since=rest["next_cursor"])
    assert idle["records"] == [] and idle["next_cursor"] == rest["next_cursor"]

    # The provider changes three items and drops two; a full sync sees that.
    db.session.get(Connection, connection.id).settings = {"records": 3, "page_size": 5, "version": 1}
    db.session.commit()
    _sync(connection)
    changes = _feed(client, auth, since=rest["next_cursor"])["records"]
    assert sorted((r["id"], r["change"]) for r in changes) == [
        ("item-0000000", "updated"), ("item-0000001", "updated"), ("item-0000002", "updated"),
        ("item-0000003", "deleted"), ("item-0000004", "deleted")]
    assert all(r["deleted"] == (r["change"] == "deleted") for r in changes)
    assert {r["data"]["version"] for r in changes if r["change"] == "updated"} == {1}


def test_feed_refuses_bad_cursors_and_unknown_streams(client, auth, make_connection):
    make_connection(name="shop")
    assert client.get("/api/connections/shop/streams/items/records?since=not-a-cursor", headers=auth).status_code == 400
    missing = client.get("/api/connections/shop/streams/nope/records", headers=auth)
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"
    assert client.get("/api/connections/shop/streams/items/records").status_code == 401
