"""The admin's webhook Deliveries page: behind login, shows verdict, event id, outcome and
the runs caused, escapes provider data, and Replay (CSRF-checked) queues the runs again."""
import pytest
from sqlalchemy import select

from tests.support import TAKES_WEBHOOKS
from tests.webapp.admin.support import admin_user, csrf_token, login, new_client  # noqa: F401  (fixture)
from webapp.extensions import db
from webapp.models import Run, WebhookDelivery
from webapp.webhooks import dispatch

from . import signing


@pytest.fixture
def admin(app, admin_user):  # noqa: F811
    browser = new_client(app)
    login(browser, admin_user)
    return browser


@pytest.fixture
def delivered(app, make_connection):
    secret = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000004"}, "note": "<script>alert(1)</script>"})
    response = app.test_client().post("/webhooks/shop", data=body,
                                      headers=signing.standard_headers(body, secret, msg_id="msg_page_1"))
    assert response.status_code == 200
    dispatch.dispatch_pending(min_age_seconds=0)  # what the kicked dispatch job does
    return {**response.get_json(), "run_ids": db.session.get(WebhookDelivery, response.get_json()["delivery_id"]).run_ids}


def test_deliveries_page_needs_a_login(app, delivered):
    response = new_client(app).get("/admin/webhooks/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_deliveries_page_shows_verdict_event_outcome_and_runs_escaped(admin, delivered):
    page = admin.get("/admin/webhooks/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    run_id = delivered["run_ids"][0]
    assert "msg_page_1" in html and "valid" in html and "enqueued" in html
    assert f'href="/admin/runs/{run_id}"' in html and "status-queued" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.headers["Cache-Control"] == "no-store"


def test_replay_needs_the_csrf_token_and_then_queues_the_runs_again(admin, delivered):
    delivery_id, first_run = delivered["delivery_id"], delivered["run_ids"][0]
    refused = admin.post(f"/admin/webhooks/{delivery_id}/replay")
    assert refused.status_code == 400
    db.session.execute(select(Run)).scalar_one().status = "completed"  # the first run is done
    db.session.commit()
    token = csrf_token(admin.get("/admin/webhooks/").get_data(as_text=True))
    replayed = admin.post(f"/admin/webhooks/{delivery_id}/replay", data={"csrf_token": token}, follow_redirects=True)
    assert replayed.status_code == 200
    db.session.expire_all()
    run_ids = db.session.get(WebhookDelivery, delivery_id).run_ids
    assert len(run_ids) == 2 and run_ids[0] == first_run
    assert f"run(s) #{run_ids[1]} queued" in replayed.get_data(as_text=True)
    new_run = db.session.get(Run, run_ids[1])
    assert (new_run.trigger, new_run.record_key, new_run.requested_by) == ("webhook", "items:item-0000004", "admin@example.com")


def test_rejected_requests_are_counted_on_the_page(app, admin, delivered):
    app.test_client().post("/webhooks/shop", data=b"{}", headers={"Content-Type": "application/json"})
    html = admin.get("/admin/webhooks/").get_data(as_text=True)
    assert "shop:missing_signature" in html
