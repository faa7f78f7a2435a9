"""The outbox page in Debian's Chromium (Playwright) against gunicorn and a real worker: a
permanent 422 shows up dead with its reason; once the destination is fixed, ticking the
event and pressing "Retry selected" sends it. Screenshot in test-output/."""
import os

import pytest

from tests.browser import OUTPUT, desktop_page
from tests.webapp.outbox.support import loops, loops_connection, outbox_workers, status_counts  # noqa: F401
from tests.support import wait_for
from tests.webapp.admin.support import (  # noqa: F401
    PASSWORD,
    _servers,
    admin_user,
    live_server,
    one_backend,
)
from webapp import outbox
from webapp.extensions import db


@pytest.fixture
def page():
    with desktop_page() as tab:
        yield tab


@one_backend
def test_dead_event_is_shown_with_its_reason_and_retry_selected_sends_it(  # noqa: F811
        app, page, live_server, admin_user, make_connection, loops, outbox_workers):
    loops.server.faults.status(422, body={"success": False, "message": "Invalid userGroup value"},
                               times=1000, path="/api/v1/contacts/update")
    loops_connection(make_connection, loops)
    outbox_workers.start()
    for voter in ("carol", "dave"):
        outbox.publish(db.session, "vote_cast", f"vote-{voter}", {"voter": {"email": f"{voter}@example.com"}})
    db.session.commit()
    wait_for(lambda: status_counts()["dead"] == 2, timeout=30, message="both events to be dead")

    page.goto(live_server.url + "/admin/outbox/")
    page.fill('input[name="email"]', admin_user)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button:has-text("Sign in")')
    page.goto(live_server.url + "/admin/outbox/")
    assert page.locator('#counts a[data-status="dead"]').text_content() == "2"
    rows = page.locator("#events tbody tr")
    assert rows.count() == 2
    assert "HTTP 422 Invalid userGroup value" in rows.first.locator(".last-error").text_content()

    page.select_option('select[name="type"]', "vote_cast")
    page.fill('input[name="key"]', "carol@example.com")
    page.click('#filters button:has-text("Filter")')
    assert page.locator("#events tbody tr").count() == 1

    loops.server.faults.clear()  # the destination is fixed
    page.check('#events input[name="ids"]')
    page.click("#retry-selected")
    page.wait_for_selector(".flash")
    assert "1 event(s) queued for delivery" in page.locator(".flash").first.text_content()
    wait_for(lambda: status_counts()["done"] == 1, timeout=30, message="the retried event to be sent")
    page.goto(live_server.url + "/admin/outbox/?status=all")
    assert page.locator('#counts a[data-status="done"]').text_content() == "1"
    page.screenshot(path=os.path.join(OUTPUT, "outbox.png"), full_page=True)
    assert loops.api.contact("carol@example.com")["userGroup"] == "Voters"
    assert loops.api.contact("dave@example.com") is None  # still dead: only carol was retried
