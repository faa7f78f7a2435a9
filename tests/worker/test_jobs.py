"""RQ entry points (worker/jobs.py), called in-process as the worker would."""
import threading
import time

from tests.support import TAKES_WEBHOOKS
from tests.webapp.webhooks import signing
from webapp.extensions import db
from webapp.models import WebhookDelivery
from webapp.queue import WEBHOOKS, queue
from webapp.webhooks import dispatch
from worker.jobs import dispatch_webhooks


def test_delivery_that_skipped_the_kick_is_caught_by_the_dispatchers_last_look(app, make_connection, redis,
                                                                                monkeypatch):
    secret = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    # A debounce longer than the test, and the job's wait before its last look ends when the
    # second delivery is stored: the order the debounce relies on, without a clock window.
    app.config["WEBHOOK_KICK_DEBOUNCE_SECONDS"] = 3600
    second_stored = threading.Event()

    def last_look_delay():
        assert second_stored.wait(30), "the second delivery was never stored"
        return 0

    monkeypatch.setattr(dispatch, "last_look_delay", last_look_delay)
    client = app.test_client()

    def post(n):
        body = signing.dumps({"type": "item.updated", "data": {"id": f"item-{n:07d}"}})
        return client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, secret)).get_json()

    first = post(1)  # asks Redis: the marker is set and a dispatch job queued
    assert queue(WEBHOOKS).count == 1
    results = []

    def job():
        with app.app_context():
            results.append(dispatch_webhooks())
            db.session.remove()

    runner = threading.Thread(target=job)
    runner.start()
    deadline = time.monotonic() + 10
    while redis.exists(dispatch.kick_marker()) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not redis.exists(dispatch.kick_marker())  # the job found nothing left and released the marker
    second = post(2)  # within the debounce: this process does not ask Redis again
    second_stored.set()
    assert not redis.exists(dispatch.kick_marker()) and queue(WEBHOOKS).count == 1
    runner.join(10)
    assert results == [2]  # the job's last look, after the debounce, found the second delivery
    db.session.rollback()
    for answer in (first, second):
        assert db.session.get(WebhookDelivery, answer["delivery_id"]).outcome == "enqueued"
