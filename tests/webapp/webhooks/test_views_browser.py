"""The Deliveries page in Debian's Chromium (Playwright) against gunicorn: a webhook sent
over HTTP shows up, and Replay queues its record run again. Screenshot in test-output/."""
import os

import pytest
import requests

from tests.browser import OUTPUT, desktop_page
from tests.support import TAKES_WEBHOOKS, wait_for
from tests.webapp.admin.support import (  # noqa: F401
    PASSWORD,
    _servers,
    admin_user,
    live_server,
    one_backend,
)
from webapp.extensions import db
from webapp.models import Run, WebhookDelivery

from . import signing


@pytest.fixture
def page():
    with desktop_page() as tab:
        yield tab


@one_backend
def test_a_delivery_appears_on_the_page_and_replay_queues_it_again(app, page, live_server, admin_user, make_connection,  # noqa: F811
                                                                    workers):
    secret = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    workers.start()  # runs the dispatch job the delivery kicks
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000012"}})
    sent = requests.post(f"{live_server.url}/webhooks/shop", data=body, timeout=10,
                         headers=signing.standard_headers(body, secret, msg_id="msg_browser_1"))
    assert sent.status_code == 200 and sent.json()["status"] == "accepted"

    def dispatched():
        db.session.rollback()
        return db.session.query(WebhookDelivery).one().outcome == "enqueued"
    wait_for(dispatched, timeout=30, message="the delivery dispatched by the worker")

    page.goto(live_server.url + "/admin/webhooks/")
    page.fill('input[name="email"]', admin_user)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button:has-text("Sign in")')
    page.goto(live_server.url + "/admin/webhooks/")
    row = page.locator("#deliveries tbody tr").first
    assert row.locator(".event-id").text_content() == "msg_browser_1"
    assert row.locator(".verdict").text_content().strip() == "valid"
    assert row.locator(".outcome").text_content().strip() == "enqueued"
    assert row.locator(".runs a").count() == 1

    db.session.query(Run).update({"status": "completed"})  # the first run is done: a replay makes a new one
    db.session.commit()
    row.locator('button:has-text("Replay")').click()
    page.wait_for_selector(".flash")
    assert "queued" in page.locator(".flash").first.text_content()
    assert page.locator("#deliveries tbody tr").first.locator(".runs a").count() == 2
    page.screenshot(path=os.path.join(OUTPUT, "webhook-deliveries.png"), full_page=True)
    db.session.expire_all()
    delivery = db.session.query(WebhookDelivery).one()
    assert delivery.provider_event_id == "msg_browser_1" and len(delivery.run_ids) == 2
