"""Record runs in batches (webapp/record_batches.py, worker/record_fetch.py), end to end:
signed webhooks over real HTTP to the hub, real RQ worker processes, real Redis, the
HighLevel simulator over HTTP with its rate limit; on SQLite and PostgreSQL."""
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from tests.simulators.highlevel import HighLevelAPI
from tests.support import TAKES_WEBHOOKS, crash_mid_run_and_resume, wait_for
from tests.webapp.webhooks import signing
from webapp.extensions import db
from webapp.models import COMPLETED, TERMINAL_STATUSES, Record, Run, RunEvent, WebhookDelivery
from webapp.webhooks.dispatch import dispatch_pending


def _count(model, *where):
    db.session.rollback()  # see what the server threads and the workers committed
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def _record_runs():
    db.session.rollback()
    return db.session.scalars(select(Run).where(Run.mode == "record").order_by(Run.id)).all()


def _stored(connection_id, stream):
    db.session.rollback()
    return set(db.session.scalars(select(Record.external_id).where(
        Record.connection_id == connection_id, Record.stream == stream, Record.deleted_at.is_(None))))


def _send_sandbox(url, secret, items, threads=16):
    """One signed Standard Webhooks request per entry of `items` (an event id and a record
    number), sent from `threads` threads at once."""
    requests_ = []
    for event, n in items:
        body = signing.dumps({"type": "item.updated", "data": {"id": f"item-{n:07d}"}})
        requests_.append((body, signing.standard_headers(body, secret, msg_id=f"msg_{event}")))
    with requests.Session() as session, ThreadPoolExecutor(threads) as pool:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
        responses = list(pool.map(lambda r: session.post(url, data=r[0], headers=r[1], timeout=30), requests_))
    assert [r.status_code for r in responses] == [200] * len(items)
    return responses


def _sandbox(make_connection, **settings):
    secret = signing.whsec()
    conn = make_connection(name="shop", settings={**TAKES_WEBHOOKS, "records": 100_000, **settings},
                           credentials={"webhook_secret": secret})
    return conn, secret


def _all_ended():
    return all(run.status in TERMINAL_STATUSES for run in _record_runs())


def test_a_burst_of_webhooks_for_distinct_records_becomes_a_few_runs_and_stores_every_record(
        app, make_connection, workers, serve):
    conn, secret = _sandbox(make_connection)
    hub = serve(app)
    workers.start()
    n = 150
    _send_sandbox(f"{hub.url}/webhooks/shop", secret, [(i, i) for i in range(n)])
    wait_for(lambda: len(_stored(conn.id, "items")) == n and _all_ended(), timeout=90,
             message="every record stored and every record run ended")
    record_runs = _record_runs()
    assert {run.status for run in record_runs} == {COMPLETED}
    assert len(record_runs) <= n // 10, f"{len(record_runs)} runs for {n} webhooks"
    assert sum(run.created for run in record_runs) == n
    assert _count(WebhookDelivery, WebhookDelivery.outcome == "enqueued") == n


def test_webhooks_naming_the_same_records_fetch_each_record_once(app, make_connection, workers, serve):
    conn, secret = _sandbox(make_connection)
    hub = serve(app)
    # 90 deliveries (distinct provider event ids) about 30 records, dispatched before any
    # worker runs: each record is queued once, whichever deliveries name it.
    _send_sandbox(f"{hub.url}/webhooks/shop", secret, [(i, i % 30) for i in range(90)])
    wait_for(lambda: dispatch_pending(min_age_seconds=0) == 0 and
             _count(WebhookDelivery, WebhookDelivery.outcome == "received") == 0, message="deliveries dispatched")
    keys = [entry[1] for run in _record_runs() for entry in run.params["records"]]
    assert sorted(keys) == sorted(f"item-{n:07d}" for n in range(30))
    workers.start()
    wait_for(lambda: len(_stored(conn.id, "items")) == 30 and _all_ended(), timeout=60, message="records stored")
    record_runs = _record_runs()
    assert sum(run.seen for run in record_runs) == 30  # fetched once each
    assert {run.status for run in record_runs} == {COMPLETED}
    assert _count(WebhookDelivery, WebhookDelivery.outcome == "enqueued") == 90


def test_a_bad_record_fails_alone_and_its_delivery_says_why(app, make_connection, workers, serve):
    conn, secret = _sandbox(make_connection, bad_every=7)  # item 6, 13, 20... are malformed
    hub = serve(app)
    responses = _send_sandbox(f"{hub.url}/webhooks/shop", secret, [(i, i) for i in range(21)])
    workers.start()
    wait_for(lambda: _count(WebhookDelivery, WebhookDelivery.outcome == "received") == 0 and _record_runs()
             and _all_ended(), timeout=60, message="the batch to end")
    bad = {6, 13, 20}
    assert _stored(conn.id, "items") == {f"item-{n:07d}" for n in range(21) if n not in bad}
    assert {run.status for run in _record_runs()} == {COMPLETED}
    assert sum(run.failed for run in _record_runs()) == 3
    for n, response in enumerate(responses):
        delivery = db.session.get(WebhookDelivery, response.json()["delivery_id"])
        if n in bad:
            assert delivery.outcome == "failed"
            assert f"record items:item-{n:07d} could not be synced" in delivery.error
            assert "Error" not in delivery.error  # a sentence, not an exception class
        else:
            assert (delivery.outcome, delivery.error) == ("enqueued", None)
    errors = db.session.scalars(select(RunEvent.record_key).where(RunEvent.kind == "record_error")).all()
    assert sorted(errors) == sorted(f"item-{n:07d}" for n in bad)


def test_a_worker_killed_mid_batch_loses_nothing_the_batch_is_swept_and_resumed(app, make_connection, workers,
                                                                                serve):
    # Its bulk endpoint takes 0.4 s a call: a batch of 500 records is three chunks of 200
    # (worker/engine.py RECORD_CHUNK_BULK), over a second.
    conn, secret = _sandbox(make_connection, latency_ms=400)
    hub = serve(app)
    _send_sandbox(f"{hub.url}/webhooks/shop", secret, [(i, i) for i in range(500)])
    wait_for(lambda: dispatch_pending(min_age_seconds=0) == 0 and
             _count(WebhookDelivery, WebhookDelivery.outcome == "received") == 0, message="deliveries dispatched")
    [run] = _record_runs()
    resumed = crash_mid_run_and_resume(app, workers, run.id, after=1, total=500)
    assert resumed.attempt == 2 and resumed.processed == 500
    # The chunks written before the kill were not fetched or counted again.
    assert (resumed.seen, resumed.created) == (500, 500)
    assert _stored(conn.id, "items") == {f"item-{n:07d}" for n in range(500)}


def test_a_batch_fetches_records_at_once_within_the_providers_shared_rate_limit(app, make_connection, workers,
                                                                              serve):
    api = HighLevelAPI(orders=60, products=3, rate_limit=(20, 2.0), seed=7)
    api.latency = 0.02
    api.server = serve(api)
    hub = serve(app)
    # The hub's window a little wider than the provider's, for a busy test machine.
    conn = make_connection(name="ghl", connector="highlevel", credentials={"token": "pit-sim-token"},
                           settings={"base_url": api.server.url, "location_id": api.location_id,
                                     "webhook_public_key": api.public_key_pem, "rate_limit": [20, 2.4],
                                     "allowed_triggers": ["manual", "webhook", "api"]})
    orders = list(api.expected_tickets())  # the orders the hub syncs (a valid product each)
    bad = orders[len(orders) // 2]
    api.orders[bad]["items"][0]["qty"] = -1  # this one's details fail validation
    url = f"{hub.url}/webhooks/{conn.name}"
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda o: api.send_webhook(url, "OrderCreate", o), orders))
    assert {a.status_code for a in answers} == {200}
    workers.start()
    wait_for(lambda: _count(WebhookDelivery, WebhookDelivery.outcome == "received") == 0 and _record_runs()
             and _all_ended(), timeout=120, message="the batches to end")
    assert _stored(conn.id, "orders") == set(orders) - {bad}
    assert {run.status for run in _record_runs()} == {COMPLETED}
    assert len(_record_runs()) < len(orders) // 4
    assert api.violations == 0 and api.window.busiest <= 20
    failed = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.outcome == "failed")).all()
    assert [bad in d.error for d in failed] == [True]


def test_a_batch_requeued_after_its_first_record_was_queued_again_keeps_its_records(app, make_connection):
    from webapp import record_batches, runs
    from webapp.models import QUEUED, WAITING, utcnow

    conn, _secret = _sandbox(make_connection)
    events = [("items", f"item-{n:07d}", False) for n in range(3)]
    (first_ids, [first]) = record_batches.add_records(conn, [(1, events)])
    db.session.commit()
    attempt = runs.claim(first.id, "w1")
    # While it runs, a webhook names its first record again: a new run, with the same record_key.
    (_ids, [second]) = record_batches.add_records(conn, [(2, events[:1])])
    db.session.commit()
    assert db.session.get(Run, second.id).record_key == db.session.get(Run, first.id).record_key
    # Its attempt fails: it goes back to the queue under a key of its own, its records intact.
    assert runs.retry_later(first.id, attempt, error_class="transient", error_message="the provider is down") == QUEUED
    requeued = db.session.get(Run, first.id)
    db.session.refresh(requeued)
    assert requeued.record_key == f"items:item-0000000#{first.id}"
    assert [entry[1] for entry in requeued.params["records"]] == [e[1] for e in events]
    # And the supervisor's sweep, and a deferral, the same way.
    attempt = runs.claim(first.id, "w1")
    assert runs.sweep_stale(now=utcnow(), stale_after=-1) == [(first.id, QUEUED)]
    attempt = runs.claim(first.id, "w1")
    assert runs.defer(first.id, attempt, seconds=60, reason="rate limited") == WAITING
