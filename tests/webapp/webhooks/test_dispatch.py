"""The dispatcher: stored deliveries become record runs in batches, exactly once each,
with parallel dispatchers and with a dispatcher killed in the middle of its batch."""
import signal
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select

from tests.conftest import BACKENDS
from tests.support import ROOT, TAKES_WEBHOOKS, kill_session, process_env
from webapp.extensions import db
from webapp.credentials import encrypt_credentials
from webapp.models import Connection, Run, WebhookDelivery
from webapp.queue import HIGH, queue
from webapp.runs import get_connection
from webapp.webhooks import delivery_writer, dispatch, ingest

from . import signing


def _store(connection_id, n, record):
    body = signing.dumps({"type": "item.updated", "data": {"id": f"item-{record:07d}"}})
    return ingest.store(connection_id, f"msg_{n}", "item.updated", {}, body)[0]


def _fresh_count(model, *where):
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def test_parallel_dispatchers_give_each_delivery_its_runs_once(app, make_connection, redis):
    shop = make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": signing.whsec()})
    # 120 deliveries about 50 records: some records are named by several deliveries.
    for n in range(120):
        _store(shop.id, n, n % 50)
    errors, results = [], []

    def dispatcher():
        with app.app_context():
            try:
                results.append(dispatch.dispatch_pending(limit=1000, min_age_seconds=0))
            except Exception as exc:  # surfaced by the assertion below
                errors.append(repr(exc))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(results) == 120  # each delivery enqueued by exactly one dispatcher
    deliveries = db.session.execute(select(WebhookDelivery)).scalars().all()
    assert {d.outcome for d in deliveries} == {"enqueued"}
    runs = {run.id: run for run in db.session.execute(select(Run)).scalars()}
    # Each record in exactly one queued run, however many deliveries named it, and the
    # records in batches (webapp/record_batches.py): a few runs, not one per record.
    where = {}
    for run in runs.values():
        for stream, record_id, _deleted, delivery_ids in run.params["records"]:
            assert f"{stream}:{record_id}" not in where
            where[f"{stream}:{record_id}"] = (run.id, set(delivery_ids))
    assert len(where) == 50 and len(runs) < 10
    for delivery in deliveries:
        [run_id] = delivery.run_ids
        record = int(delivery.provider_event_id.removeprefix("msg_")) % 50
        assert where[f"items:item-{record:07d}"][0] == run_id and delivery.id in where[f"items:item-{record:07d}"][1]
    assert sorted(queue(HIGH).get_job_ids()) == sorted(run.rq_job_id for run in runs.values())


# A dispatcher process that claims a batch and creates its runs, then is SIGKILLed just
# before its commit (the commit is replaced by a wait for the kill).
KILLED_DISPATCHER = """
import sys, time
from webapp import create_app
from webapp.extensions import db
from webapp.webhooks import dispatch

app = create_app()
with app.app_context():
    def stop_here():
        print("claimed", flush=True)
        time.sleep(600)
    db.session.commit = stop_here
    dispatch.dispatch_pending(min_age_seconds=0)
"""


def test_dispatcher_killed_before_its_commit_leaves_the_batch_for_the_next(app, make_connection, redis):
    shop = make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": signing.whsec()})
    for n in range(30):
        _store(shop.id, n, n)
    child = subprocess.Popen([sys.executable, "-c", KILLED_DISPATCHER], cwd=ROOT, env=process_env(app),
                             stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == b"claimed"
    finally:
        kill_session(child.pid, signal.SIGKILL)
        child.wait(30)
    assert _fresh_count(WebhookDelivery, WebhookDelivery.outcome == "received") == 30
    assert _fresh_count(Run) == 0
    deadline = time.monotonic() + 30  # PostgreSQL lets the dead backend's locks go shortly after
    while dispatch.dispatch_pending(min_age_seconds=0) < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _fresh_count(WebhookDelivery, WebhookDelivery.outcome == "enqueued") == 30
    assert _fresh_count(Run) == 1  # the 30 records in one batched record run
    [run] = db.session.scalars(select(Run)).all()
    assert sorted(entry[1] for entry in run.params["records"]) == [f"item-{n:07d}" for n in range(30)]


def test_connection_changes_made_elsewhere_are_seen_within_the_cache_time(app, make_connection, monkeypatch):
    from webapp.webhooks import targets

    old, new = signing.whsec(), signing.whsec()
    shop = make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": old})
    app.config["WEBHOOK_CONNECTION_CACHE_SECONDS"] = 30
    client = app.test_client()

    def post(secret, n):
        body = signing.dumps({"type": "item.updated", "data": {"id": f"item-{n:07d}"}})
        return client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, secret)).status_code

    assert post(old, 1) == 200
    # Another process rotates the secret: a raw UPDATE, no ORM event reaches this process.
    table = Connection.__table__
    db.session.execute(table.update().where(table.c.id == shop.id)
                       .values(credentials_encrypted=encrypt_credentials({"webhook_secret": new})))
    db.session.commit()
    assert post(old, 2) == 200  # still trusted from the cache
    monkeypatch.setattr(targets, "clock", lambda: time.monotonic() + 31)  # the cache time has passed
    assert post(old, 3) == 401 and post(new, 4) == 200


def test_connection_changed_through_the_orm_in_this_process_is_seen_at_once(app, make_connection):
    old, new = signing.whsec(), signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": old})
    client = app.test_client()
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000001"}})
    assert client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, old)).status_code == 200
    connection = get_connection("shop")
    connection.credentials = {"webhook_secret": new}
    db.session.commit()
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000002"}})
    assert client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, old)).status_code == 401
    assert client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, new)).status_code == 200


@pytest.mark.parametrize("app", [b for b in BACKENDS if b == "postgresql"], indirect=True)
def test_delivery_store_reconnects_after_the_database_dropped_its_connections(app, make_connection):
    secret = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    client = app.test_client()

    def post(n):
        body = signing.dumps({"type": "item.updated", "data": {"id": f"item-{n:07d}"}})
        return client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, secret))

    assert post(1).status_code == 200  # the delivery engine now holds an open connection
    database = delivery_writer.engine().url.database
    db.session.remove()  # the test's own session holds no connection while they are ended
    with db.engine.connect() as admin:  # a real fault: the server ends every other session
        killed = admin.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %(db)s AND pid <> pg_backend_pid()", {"db": database}).scalar()
    assert killed >= 1
    second = post(2)
    assert second.status_code == 200 and second.get_json()["status"] == "accepted"
    assert _fresh_count(WebhookDelivery) == 2


# -- the trigger policy (docs/CONNECTORS.md, "Trigger policy") -----------------------------

ZOOM_SECRET = "zoom-secret-token-" + "y" * 8


def _zoom_s2(make_connection, **settings):
    """S2's connection: the real Zoom connector, schedule `manual`, no trigger policy."""
    return make_connection(name="zoom-s2", connector="zoom", schedule="manual", settings=settings,
                           credentials={"account_id": "acc", "client_id": "id", "client_secret": "secret",
                                        "webhook_secret_token": ZOOM_SECRET})


def _webinar_updated(client, n):
    body = signing.dumps({"event": "webinar.updated", "event_ts": 1767225600000 + n,
                          "payload": {"account_id": "acc", "object": {"id": 81234567890 + n}}})
    return client.post("/webhooks/zoom-s2", data=body, headers=signing.zoom_headers(body, ZOOM_SECRET))


def _deliveries():
    db.session.expire_all()
    return db.session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars().all()


def _connection_reads_during(action):
    """How many SELECTs on the connections table `action` sends to the database."""
    from sqlalchemy import event

    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM connections" in statement:
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return len(seen)


def test_manual_only_zoom_connection_stores_signed_webhooks_as_ignored_and_starts_no_run(app, make_connection, redis):
    _zoom_s2(make_connection)
    client = app.test_client()
    for n in range(3):
        response = _webinar_updated(client, n)
        assert response.status_code == 200 and response.get_json()["status"] == "accepted"  # Zoom gets its 2xx
    # One read of the connection for the whole batch, not one per delivery.
    assert _connection_reads_during(lambda: dispatch.dispatch_pending(min_age_seconds=0)) == 1
    deliveries = _deliveries()
    assert len(deliveries) == 3  # stored: nothing lost
    for delivery in deliveries:
        assert (delivery.outcome, delivery.run_ids) == ("ignored", [])
        assert delivery.error == "connection 'zoom-s2' is manual-only: webhook triggers are refused"
    assert _fresh_count(Run) == 0 and queue(HIGH).get_job_ids() == []
    # Replay gives the same answer.
    assert dispatch.replay(deliveries[0].id, requested_by="admin@example.com") == []
    assert _deliveries()[0].outcome == "ignored" and _fresh_count(Run) == 0


def test_webhook_refused_by_an_explicit_policy_is_ignored_and_replays_once_webhooks_are_allowed(
        app, make_connection, redis):
    zoom = _zoom_s2(make_connection, allowed_triggers=["manual", "event"])
    zoom.schedule = "hourly:0"
    db.session.commit()
    assert _webinar_updated(app.test_client(), 1).status_code == 200
    assert dispatch.dispatch_pending(min_age_seconds=0) == 0
    [delivery] = _deliveries()
    assert (delivery.outcome, delivery.error) == ("ignored", "webhook triggers are off for connection 'zoom-s2'")
    get_connection("zoom-s2").settings = {"allowed_triggers": ["manual", "webhook"]}
    db.session.commit()
    [run_id] = dispatch.replay(delivery.id, requested_by="admin@example.com")
    [delivery] = _deliveries()
    run = db.session.get(Run, run_id)
    assert (delivery.outcome, delivery.error, delivery.run_ids) == ("enqueued", None, [run_id])
    assert (run.trigger, run.record_key) == ("webhook", "webinars:81234567891")


def test_manual_connection_whose_policy_takes_webhooks_gets_its_record_runs(app, make_connection, redis):
    _zoom_s2(make_connection, allowed_triggers=["manual", "webhook", "api"])  # S4's wiring
    assert _webinar_updated(app.test_client(), 2).status_code == 200
    assert dispatch.dispatch_pending(min_age_seconds=0) == 1
    [delivery] = _deliveries()
    [run] = db.session.execute(select(Run)).scalars().all()
    assert (delivery.outcome, delivery.run_ids) == ("enqueued", [run.id])
    assert (run.mode, run.trigger, run.record_key) == ("record", "webhook", "webinars:81234567892")
