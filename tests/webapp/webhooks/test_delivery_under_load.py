"""Webhooks over real HTTP (a threaded server on 127.0.0.1): parallel duplicates, and a
real Redis outage while deliveries arrive."""
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from tests.conftest import make_app
from tests.simulators.harness import SimulatorServer
from tests.support import TAKES_WEBHOOKS, RedisServer, WorkerProcess, wait_for
from webapp.extensions import db
from webapp.models import COMPLETED, Record, Run, WebhookDelivery
from webapp.webhooks.dispatch import dispatch_pending

from . import signing


def _count(model, *where):
    db.session.rollback()  # see what the server threads and the worker committed
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def _deliveries(secret, ids):
    """One signed request per entry of `ids`; a repeated id is the provider retrying the same event."""
    out = []
    for n in ids:
        body = signing.dumps({"type": "item.updated", "data": {"id": f"item-{n:07d}"}})
        out.append((body, signing.standard_headers(body, secret, msg_id=f"msg_{n}")))
    return out


def _send_all(url, deliveries, threads=25):
    with requests.Session() as session, ThreadPoolExecutor(threads) as pool:
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=threads)
        session.mount("http://", adapter)
        return list(pool.map(lambda d: session.post(url, data=d[0], headers=d[1], timeout=30), deliveries))


def test_parallel_duplicates_store_one_delivery_and_one_run_per_event(app, make_connection, redis):
    secret = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    ids = [i % 40 for i in range(100)]  # 100 deliveries of 40 distinct event ids, interleaved
    with SimulatorServer(app) as server:
        responses = _send_all(f"{server.url}/webhooks/shop", _deliveries(secret, ids))
    assert [r.status_code for r in responses] == [200] * 100
    statuses = [r.json()["status"] for r in responses]
    assert statuses.count("accepted") == 40 and statuses.count("duplicate") == 60
    assert _count(WebhookDelivery) == 40
    # The kicked dispatch job, run by a real worker, gives them their runs.
    worker = WorkerProcess(app).start()
    try:
        wait_for(lambda: _count(WebhookDelivery, WebhookDelivery.outcome == "received") == 0, timeout=30,
                 message="every delivery dispatched")
    finally:
        worker.kill()
    # The 40 records went into record runs in batches (webapp/record_batches.py): each once.
    record_runs = db.session.scalars(select(Run).where(Run.mode == "record", Run.trigger == "webhook")).all()
    assert 1 <= len(record_runs) < 40
    assert db.session.scalar(select(func.sum(WebhookDelivery.duplicates))) == 60
    keys = [f"{entry[0]}:{entry[1]}" for run in record_runs for entry in run.params["records"]]
    assert sorted(keys) == sorted(f"items:item-{n:07d}" for n in range(40))


def test_deliveries_during_a_redis_outage_are_acknowledged_stored_and_processed_after(app, make_connection, tmp_path):
    secret = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    private = RedisServer().start()
    worker = None
    try:
        web = make_app(app.config["SQLALCHEMY_DATABASE_URI"], private.url, str(tmp_path))
        with SimulatorServer(web) as server:
            private.stop()  # really stopped: the process is killed, the port refuses
            responses = _send_all(f"{server.url}/webhooks/shop", _deliveries(secret, range(12)), threads=6)
            assert [r.status_code for r in responses] == [200] * 12
            assert {r.json()["status"] for r in responses} == {"accepted"}
            assert _count(WebhookDelivery, WebhookDelivery.outcome == "received") == 12
            with web.app_context():
                assert dispatch_pending(min_age_seconds=0) == 0  # Redis still away

            private.start()
            worker = WorkerProcess(web).start()
            with web.app_context():
                assert dispatch_pending(min_age_seconds=0) == 12
            wait_for(lambda: _count(Record, Record.stream == "items") == 12
                     and _count(Run, Run.status != COMPLETED) == 0, timeout=60,
                     message="every record stored and every record run completed by the worker")
        assert _count(WebhookDelivery, WebhookDelivery.outcome == "enqueued") == 12
        stored = db.session.scalars(select(Record.external_id).where(Record.stream == "items")).all()
        assert sorted(stored) == [f"item-{n:07d}" for n in range(12)]
    finally:
        if worker:
            worker.kill()
        private.stop()
