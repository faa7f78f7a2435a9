"""The admin outbox page (webapp/outbox/views.py): counts, pending and dead events with their last error, filters,
Retry and Discard (one, selected, all matching), login and CSRF."""
from sqlalchemy import select

from tests.webapp.outbox.support import (  # noqa: F401  (fixtures)
    loops,
    loops_connection,
    outbox_workers,
    status_counts,
)
from tests.support import wait_for
from tests.webapp.admin.support import admin_user, client, csrf_token, new_client  # noqa: F401  (fixtures)
from webapp import outbox
from webapp.extensions import db
from webapp.models import OutboxEvent
from webapp.outbox.claim import claim, mark_done, mark_failed, release


def _vote(voter):
    [event_id] = outbox.publish(db.session, "vote_cast", f"vote-{voter}",
                                {"voter": {"email": f"{voter}@example.com"}}).ids
    return event_id


def _row(event_id):
    db.session.rollback()
    return db.session.get(OutboxEvent, event_id)


def _seed(make_connection, loops):
    """carol dead (with a hostile error text), dave done, erin pending, one nomination pending."""
    loops_connection(make_connection, loops)
    ids = {name: _vote(name) for name in ("carol", "dave", "erin")}
    outbox.publish(db.session, "nomination_submitted", "nom-1", {"nominator": {"email": "nina@example.com"}})
    db.session.commit()
    claimed = {c.key.split("@")[0]: c for c in claim(db.session, "w1", limit=10)}
    mark_failed(db.session, claimed["carol"], "HTTP 422 <script>alert(1)</script>", permanent=True)
    mark_done(db.session, claimed["dave"])
    release(db.session, claimed["erin"])
    release(db.session, claimed["nina"])
    return ids


def test_outbox_pages_need_a_login(app, make_connection, loops):
    ids = _seed(make_connection, loops)
    anonymous = new_client(app)
    for method, url in (("GET", "/admin/outbox/"), ("GET", f"/admin/outbox/{ids['carol']}"),
                        ("POST", "/admin/outbox/retry"), ("POST", "/admin/outbox/discard")):
        response = anonymous.open(url, method=method, data={"one": ids["carol"]})
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login"), url
    assert _row(ids["carol"]).status == "dead"


def test_page_shows_counts_and_what_needs_attention_with_last_errors_escaped(app, client, make_connection, loops):
    ids = _seed(make_connection, loops)
    html = client.get("/admin/outbox/").get_data(as_text=True)
    assert 'data-status="pending">2</a>' in html and 'data-status="dead">1</a>' in html
    assert 'data-status="done">1</a>' in html
    assert f'id="event-{ids["carol"]}" data-status="dead"' in html
    assert f'id="event-{ids["erin"]}" data-status="pending"' in html
    assert f'id="event-{ids["dave"]}"' not in html  # done: not in the default view
    assert "HTTP 422 &lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert 'href="/admin/outbox/"' in client.get("/admin/").get_data(as_text=True)  # in the admin menu

    by_type = client.get("/admin/outbox/?status=all&type=nomination_submitted").get_data(as_text=True)
    assert by_type.count('<tr id="event-') == 1 and "nina@example.com" in by_type
    by_key = client.get("/admin/outbox/?status=all&key=dave@example.com").get_data(as_text=True)
    assert f'id="event-{ids["dave"]}" data-status="done"' in by_key and by_key.count('<tr id="event-') == 1
    detail = client.get(f"/admin/outbox/{ids['carol']}").get_data(as_text=True)
    assert '"userGroup": "Voters"' in detail and "carol@example.com" in detail
    assert "HTTP 422 &lt;script&gt;" in detail
    assert client.get("/admin/outbox/999999").status_code == 404


def test_post_without_a_csrf_token_changes_nothing(app, client, make_connection, loops):
    ids = _seed(make_connection, loops)
    response = client.post("/admin/outbox/discard", data={"one": ids["carol"]})
    assert response.status_code == 400
    assert _row(ids["carol"]).status == "dead"


def test_retry_selected_and_discard_all_matching(app, client, make_connection, loops):
    ids = _seed(make_connection, loops)
    token = csrf_token(client.get("/admin/outbox/").get_data(as_text=True))
    response = client.post("/admin/outbox/retry", data={"csrf_token": token, "ids": [ids["carol"], ids["dave"]]})
    assert response.status_code == 302
    flashed = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "1 event(s) queued for delivery; 1 skipped (being delivered or done)." in flashed
    assert (_row(ids["carol"]).status, _row(ids["carol"]).attempts) == ("pending", 0)
    assert _row(ids["dave"]).status == "done"
    # Discard every pending vote_cast event: carol and erin, not the nomination, not dave.
    response = client.post("/admin/outbox/discard", data={"csrf_token": token, "scope": "matching",
                                                           "status": "pending", "type": "vote_cast", "key": ""})
    assert response.headers["Location"] == "/admin/outbox/?status=pending&type=vote_cast"
    db.session.rollback()
    remaining = db.session.execute(select(OutboxEvent.key).order_by(OutboxEvent.id)).scalars().all()
    assert remaining == ["dave@example.com", "nina@example.com"]


def test_permanent_422_is_dead_at_once_and_retry_from_the_admin_page_sends_it_once_fixed(
        app, client, make_connection, loops, outbox_workers):
    loops.server.faults.status(422, body={"success": False, "message": "Invalid userGroup value"},
                               times=1000, path="/api/v1/contacts/update")
    loops_connection(make_connection, loops)
    outbox_workers.start()
    event_id = _vote("carol")
    db.session.commit()
    wait_for(lambda: _row(event_id).status == "dead", timeout=30, message="the event to be dead")
    row = _row(event_id)
    assert row.attempts == 1 and "HTTP 422 Invalid userGroup value" in row.last_error
    assert len(loops.log.entries()) == 1  # dead at once: no retries
    page = client.get("/admin/outbox/?status=dead").get_data(as_text=True)
    assert "HTTP 422 Invalid userGroup value" in page

    loops.server.faults.clear()  # the destination is fixed
    response = client.post("/admin/outbox/retry", data={"csrf_token": csrf_token(page), "one": event_id})
    assert response.status_code == 302
    wait_for(lambda: _row(event_id).status == "done", timeout=30, message="the retried event to be sent")
    assert loops.api.contact("carol@example.com")["userGroup"] == "Voters"
    assert status_counts() == {"pending": 0, "processing": 0, "done": 1, "dead": 0}
