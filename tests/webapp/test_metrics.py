"""/metrics: Prometheus text that parses, with counters that move as a sync runs."""
from prometheus_client.parser import text_string_to_metric_families

from tests.simulators.harness import RecordsAPI, SimulatorServer, make_records
from tests.support import TAKES_WEBHOOKS, wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import Run


def _scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def test_metrics_parse_and_move_as_a_sandbox_sync_runs(app, make_connection, workers):
    make_connection(name="demo", settings={"records": 90, "page_size": 30, "bad_every": 30})
    client = app.test_client()
    before = _scrape(client)
    run_id = runs.trigger(runs.get_connection("demo"), trigger="api").run.id
    queued = _scrape(client)
    assert _value(queued, "synchub_runs_active", connection="demo", status="queued") == 1
    assert _value(queued, "synchub_queue_length", queue="default") == 1
    workers.start()
    wait_for(lambda: db.session.get(Run, run_id).status == "completed" or db.session.expire_all(), timeout=60,
             message="the sync")

    def moved():
        after = _scrape(client)
        return _value(after, "synchub_runs_finished_total", connection="demo", status="completed", trigger="api") == 1 and after

    after = wait_for(moved, timeout=10, message="metrics flushed by the worker")
    assert _value(before, "synchub_runs_started_total", connection="demo", trigger="api") == 0
    assert _value(after, "synchub_runs_started_total", connection="demo", trigger="api") == 1
    assert _value(after, "synchub_records_total", connection="demo", stream="items", outcome="created") == 87
    assert _value(after, "synchub_records_total", connection="demo", stream="items", outcome="failed") == 3
    assert _value(after, "synchub_run_duration_seconds_count", connection="demo", status="completed") == 1
    assert _value(after, "synchub_runs_active", connection="demo", status="queued") == 0


def test_provider_requests_and_retries_are_counted(app, make_connection, redis):
    from worker.engine import execute_run

    api = RecordsAPI(make_records(40))
    with SimulatorServer(api) as server:
        server.faults.status(503, times=2)
        conn = make_connection(name="api", connector="rest", settings={
            "base_url": server.url, "streams": {"items": {"path": "/items", "records_key": "items",
                                                          "pagination": {"type": "page", "page_size": 100}}}})
        run_id = runs.trigger(conn, enqueue=False).run.id
        assert execute_run(run_id, redis_client=redis) == "completed"
        host = server.url.split("//", 1)[1]
    samples = _scrape(app.test_client())
    assert _value(samples, "synchub_provider_requests_total", host=host, status=503) == 2
    assert _value(samples, "synchub_provider_requests_total", host=host, status=200) == 1
    assert _value(samples, "synchub_provider_retries_total", host=host, reason="transient") == 2


def test_metrics_can_require_a_token(app):
    app.config["METRICS_TOKEN"] = "scrape-me"
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


def test_webhook_verdicts_are_counted(app, make_connection):
    import base64
    import hashlib
    import hmac as hmac_lib
    import json
    import time

    secret = base64.b64encode(b"k" * 24).decode()
    make_connection(name="hooks", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": "whsec_" + secret})
    body = json.dumps({"type": "item.updated", "data": {"id": "item-0000001"}}).encode()
    stamp = str(int(time.time()))
    signature = base64.b64encode(hmac_lib.new(b"k" * 24, f"msg_1.{stamp}.".encode() + body, hashlib.sha256).digest())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": "v1," + signature.decode(),
               "Content-Type": "application/json"}
    client = app.test_client()
    assert client.post("/webhooks/hooks", data=body, headers=headers).status_code == 200
    assert client.post("/webhooks/hooks", data=body, headers=headers).status_code == 200
    bad = dict(headers, **{"webhook-signature": "v1,AAAA"})
    assert client.post("/webhooks/hooks", data=body, headers=bad).status_code == 401
    samples = _scrape(client)
    assert _value(samples, "synchub_webhook_deliveries_total", connection="hooks", verdict="accepted") == 1
    assert _value(samples, "synchub_webhook_deliveries_total", connection="hooks", verdict="duplicate") == 1
    assert sum(v for (name, labels), v in samples.items()
               if name == "synchub_webhook_deliveries_total" and ("connection", "hooks") in labels
               and ("verdict", "accepted") not in labels and ("verdict", "duplicate") not in labels) == 1


def test_a_histogram_counts_each_observation_in_its_bucket_and_every_one_above(app):
    import pytest

    from webapp import metrics

    client = app.test_client()
    name = "synchub_outbox_delivery_latency_seconds"
    before = _scrape(client)
    for seconds in (0.07, 0.3, 0.3, 7.0):
        metrics.observe("outbox_delivery_latency_seconds", seconds)
    metrics.inc("outbox_events", 3, status="done")
    after = _scrape(client)

    def moved(sample, **labels):
        return _value(after, sample, **labels) - _value(before, sample, **labels)

    assert [moved(name + "_bucket", le=le) for le in ("0.05", "0.1", "0.25", "0.5", "5.0", "10.0", "+Inf")] == [
        0, 1, 1, 3, 3, 4, 4]
    assert moved(name + "_count") == 4
    assert moved(name + "_sum") == pytest.approx(7.67)
    assert moved("synchub_outbox_events_total", status="done") == 3
