"""The ingest flow: each refusal has its status and JSON reason and stores nothing; an
accepted delivery is stored once per event id and becomes record runs on the high queue."""
import pytest
from sqlalchemy import func, select

from tests.conftest import make_app
from tests.support import TAKES_WEBHOOKS, free_port
from webapp.extensions import db
from webapp.models import Run, WebhookDelivery
from webapp.queue import HIGH, WEBHOOKS, queue
from webapp.runs import get_connection
from webapp.webhooks import dispatch, ingest
from worker.jobs import dispatch_webhooks

from . import signing


@pytest.fixture
def secret(make_connection):
    value = signing.whsec()
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": value})
    return value


def _post(client, secret, payload=None, body=None, msg_id=None, **headers):
    body = body if body is not None else signing.dumps(payload or {"type": "item.updated", "data": {"id": "item-0000001"}})
    signed = signing.standard_headers(body, secret, msg_id=msg_id)
    signed.update(headers)
    return client.post("/webhooks/shop", data=body, headers=signed)


def _deliveries():
    return db.session.execute(select(WebhookDelivery).order_by(WebhookDelivery.id)).scalars().all()


def _run_count():
    return db.session.scalar(select(func.count()).select_from(Run))


def _dispatched(answer):
    """Run the dispatcher (what the kicked RQ job does) and return the delivery's run ids."""
    dispatch.dispatch_pending(min_age_seconds=0)
    db.session.expire_all()
    return db.session.get(WebhookDelivery, answer["delivery_id"]).run_ids


def _refused(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json and response.get_json()["error"] == code and response.get_json()["reason"]
    assert _deliveries() == [] and _run_count() == 0


def test_body_over_the_limit_is_413(app, client, secret):
    app.config["WEBHOOK_MAX_BYTES"] = 64
    big = signing.dumps({"type": "item.updated", "data": {"id": "item-0000001", "pad": "x" * 100}})
    _refused(_post(client, secret, body=big), 413, "too_large")


def test_wrong_content_type_is_415(client, secret):
    _refused(_post(client, secret, **{"Content-Type": "text/plain"}), 415, "unsupported_media_type")


def test_signed_but_malformed_json_is_400(client, secret):
    _refused(_post(client, secret, body=b'{"type": "item.updated", "data": '), 400, "malformed_json")


def test_signed_json_that_is_not_an_object_is_400(client, secret):
    _refused(_post(client, secret, body=b'["item-0000001"]'), 400, "malformed_json")


def test_unknown_connection_is_404(client, secret):
    body = signing.dumps({"type": "item.updated"})
    response = client.post("/webhooks/nope", data=body, headers=signing.standard_headers(body, secret))
    _refused(response, 404, "unknown_connection")


def test_connection_addressed_by_id_works_too(client, secret):
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000002"}})
    response = client.post(f"/webhooks/{get_connection('shop').id}", data=body, headers=signing.standard_headers(body, secret))
    assert response.status_code == 200 and response.get_json()["status"] == "accepted"


def test_rejections_are_counted_not_stored(client, secret, redis):
    _post(client, secret, body=b"{}", **{"webhook-signature": "v1,AAAA"})
    _post(client, secret, body=b"{}", **{"webhook-signature": "v1,AAAA"})
    _post(client, secret, **{"Content-Type": "text/plain"})
    for made_up in ("nope-1", "nope-2", "nope-3"):  # names anyone can invent share one counter
        client.post(f"/webhooks/{made_up}", data=b"{}", headers={"Content-Type": "application/json"})
    assert ingest.rejected_counts() == {"shop:bad_signature": 2, "shop:unsupported_media_type": 1,
                                        "(unknown):unknown_connection": 3}
    assert _deliveries() == []


def test_accepted_delivery_is_stored_then_dispatched_to_a_record_run_on_the_high_queue(client, secret, redis):
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000009"}})
    response = _post(client, secret, body=body, msg_id="msg_42")
    answer = response.get_json()
    assert response.status_code == 200 and answer["status"] == "accepted" and answer["event_id"] == "msg_42"
    [delivery] = _deliveries()
    assert delivery.raw_body == body and delivery.provider_event_id == "msg_42"
    assert delivery.outcome == "received" and delivery.run_ids == [] and _run_count() == 0
    high = queue(HIGH)
    [kicked] = queue(WEBHOOKS).jobs  # the request only stored it and asked for a dispatcher
    assert kicked.func_name == dispatch.DISPATCH_JOB and high.job_ids == []

    run_ids = _dispatched(answer)
    assert db.session.get(WebhookDelivery, answer["delivery_id"]).outcome == "enqueued"
    run = db.session.get(Run, run_ids[0])
    assert (run.trigger, run.mode, run.record_key, run.status) == ("webhook", "record", "items:item-0000009", "queued")
    assert high.job_ids == [run.rq_job_id]


def test_a_burst_of_deliveries_kicks_one_dispatcher(client, secret, redis):
    for n in range(5):
        _post(client, secret, {"type": "item.updated", "data": {"id": f"item-{n:07d}"}})
    assert [job.func_name for job in queue(WEBHOOKS).jobs] == [dispatch.DISPATCH_JOB]
    assert dispatch_webhooks() == 5
    # One record run fetches the five records (webapp/record_batches.py).
    assert _run_count() == 1
    [run] = db.session.scalars(select(Run)).all()
    assert [entry[1] for entry in run.params["records"]] == [f"item-{n:07d}" for n in range(5)]
    # The dispatcher released the marker before it looked: the next delivery queues a new one.
    _post(client, secret, {"type": "item.updated", "data": {"id": "item-0000099"}})
    assert [job.func_name for job in queue(WEBHOOKS).jobs] == [dispatch.DISPATCH_JOB] * 2


def test_duplicate_event_id_is_answered_2xx_and_counted_once_stored(client, secret):
    first = _post(client, secret, msg_id="msg_dup")
    again = [_post(client, secret, msg_id="msg_dup") for _ in range(3)]
    assert first.get_json()["status"] == "accepted"
    assert all(r.status_code == 200 and r.get_json()["status"] == "duplicate" for r in again)
    assert {r.get_json()["delivery_id"] for r in again} == {first.get_json()["delivery_id"]}
    _dispatched(first.get_json())
    [delivery] = _deliveries()
    assert delivery.duplicates == 3 and _run_count() == 1


def test_delete_event_asks_for_a_soft_delete(client, secret):
    answer = _post(client, secret, {"type": "item.deleted", "data": {"id": "item-0000003"}}).get_json()
    run = db.session.get(Run, _dispatched(answer)[0])
    assert run.params == {"records": [["items", "item-0000003", True, [answer["delivery_id"]]]]}


def test_event_the_connector_does_not_map_is_stored_as_ignored(client, secret):
    response = _post(client, secret, {"type": "account.renamed", "data": {}})
    assert response.status_code == 200
    _dispatched(response.get_json())
    [delivery] = _deliveries()
    assert delivery.outcome == "ignored" and delivery.run_ids == [] and _run_count() == 0


def test_delivery_for_a_disabled_connection_is_kept_as_failed_with_the_reason(client, secret):
    get_connection("shop").enabled = False
    db.session.commit()
    response = _post(client, secret)
    assert response.status_code == 200
    _dispatched(response.get_json())
    [delivery] = _deliveries()
    assert delivery.outcome == "failed" and "disabled" in delivery.error and _run_count() == 0


def test_replay_recreates_the_record_runs(client, secret):
    answer = _post(client, secret).get_json()
    first_run = db.session.get(Run, _dispatched(answer)[0])
    first_run.status = "completed"
    db.session.commit()
    new_ids = dispatch.replay(answer["delivery_id"], requested_by="admin@example.com")
    assert len(new_ids) == 1 and new_ids[0] != first_run.id
    replayed = db.session.get(Run, new_ids[0])
    assert (replayed.trigger, replayed.record_key, replayed.requested_by) == ("webhook", "items:item-0000001", "admin@example.com")
    assert db.session.get(WebhookDelivery, answer["delivery_id"]).run_ids == [first_run.id, new_ids[0]]


@pytest.mark.parametrize("database_url", [
    "sqlite:////nonexistent-synchub-dir/db.sqlite",
    f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone",
], ids=["sqlite-unopenable", "postgresql-refused"])
def test_database_unavailable_is_never_2xx_and_highlevel_gets_429(redis_url, tmp_path, database_url):
    down = make_app(database_url, redis_url, str(tmp_path))
    client = down.test_client()
    body = signing.dumps({"type": "OrderCreate", "_id": "o1"})
    ghl = client.post("/webhooks/ghl", data=body, headers={"x-ghl-signature": "AAAA", "Content-Type": "application/json"})
    assert ghl.status_code == 429 and int(ghl.headers["Retry-After"]) > 0
    assert ghl.get_json()["error"] == "unavailable"
    std = client.post("/webhooks/shop", data=body, headers=signing.standard_headers(body, signing.whsec()))
    assert std.status_code == 503 and std.headers["Retry-After"] and std.get_json()["error"] == "unavailable"


def test_pending_delivery_whose_handler_died_before_its_runs_gets_them(app, secret):
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000005"}})
    delivery_id, duplicate = ingest.store(get_connection("shop").id, "msg_orphan", "item.updated", {}, body)
    assert not duplicate and db.session.get(WebhookDelivery, delivery_id).outcome == "received"
    assert dispatch.dispatch_pending(min_age_seconds=0) == 1
    db.session.expire_all()
    delivery = db.session.get(WebhookDelivery, delivery_id)
    run = db.session.get(Run, delivery.run_ids[0])
    assert delivery.outcome == "enqueued" and run.record_key == "items:item-0000005"


def test_pending_delivery_does_not_recreate_runs_that_already_ran(app, secret):
    response = _post(client=app.test_client(), secret=secret).get_json()
    delivery_id, [run_id] = response["delivery_id"], _dispatched(response)
    # As if Redis had been down: the delivery waits, and meanwhile its run was requeued and ran.
    db.session.execute(WebhookDelivery.__table__.update().values(outcome="received"))
    db.session.execute(Run.__table__.update().values(status="completed"))
    db.session.commit()
    assert dispatch.dispatch_pending(min_age_seconds=0) == 1
    db.session.expire_all()
    assert db.session.get(WebhookDelivery, delivery_id).run_ids == [run_id]
    assert db.session.get(WebhookDelivery, delivery_id).outcome == "enqueued" and _run_count() == 1


def test_supervisor_step_gives_pending_deliveries_their_runs(app, secret):
    from datetime import timedelta

    from scheduler.supervisor import Supervisor
    from webapp.models import utcnow

    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000007"}})
    delivery_id, _ = ingest.store(get_connection("shop").id, "msg_while_redis_down", "item.updated", {}, body)
    [step] = [step for step in Supervisor(app, name="s-webhooks").steps() if step.name == "webhooks"]
    assert step.func(utcnow()) == {"deliveries_enqueued": 0}  # too fresh: a kicked dispatcher may have it
    assert step.func(utcnow() + timedelta(seconds=30)) == {"deliveries_enqueued": 1}
    db.session.expire_all()
    assert db.session.get(WebhookDelivery, delivery_id).outcome == "enqueued"
