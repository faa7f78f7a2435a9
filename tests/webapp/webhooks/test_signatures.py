"""Signature schemes through POST /webhooks/<connection>, with known-answer vectors made
independently (tests/webapp/webhooks/signing.py). A valid request is stored and becomes a
record run; every forged, stale or altered one is a 401 that stores nothing."""
import hashlib
import hmac
import json
import time

import pytest
from sqlalchemy import func, select

from tests.support import TAKES_WEBHOOKS
from webapp.extensions import db
from webapp.models import Run, WebhookDelivery
from webapp.webhooks import dispatch

from . import signing

TOO_OLD, TOO_NEW = -310, +310  # beyond the ±5 minute tolerance, with room for whole-second stamps


def _counts():
    return (db.session.scalar(select(func.count()).select_from(WebhookDelivery)),
            db.session.scalar(select(func.count()).select_from(Run)))


def _assert_rejected(response, code):
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["error"] == code
    assert response.get_json()["reason"]
    assert _counts() == (0, 0)


def _assert_accepted(response, record_key):
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "accepted"
    assert dispatch.dispatch_pending(min_age_seconds=0) == 1  # what the kicked dispatch job does
    run = db.session.execute(select(Run)).scalar_one()
    assert (run.mode, run.trigger, run.record_key) == ("record", "webhook", record_key)
    assert _counts() == (1, 1)
    return run


# -- Standard Webhooks ---------------------------------------------------------------------


@pytest.fixture
def standard(make_connection):
    secret = signing.whsec()
    make_connection(name="std", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": secret})
    body = signing.dumps({"type": "item.updated", "data": {"id": "item-0000007"}})
    return secret, body


def test_standard_valid_signature_is_stored_and_becomes_a_record_run(client, standard):
    secret, body = standard
    run = _assert_accepted(client.post("/webhooks/std", data=body, headers=signing.standard_headers(body, secret)),
                           "items:item-0000007")
    assert [entry[:3] for entry in run.params["records"]] == [["items", "item-0000007", False]]


def test_standard_two_signatures_pass_when_one_matches(client, standard):
    secret, body = standard
    rotated_out = "v1," + "A" * 43 + "="
    headers = signing.standard_headers(body, secret, extra_signatures=[rotated_out])
    assert len(headers["webhook-signature"].split()) == 2
    _assert_accepted(client.post("/webhooks/std", data=body, headers=headers), "items:item-0000007")


def test_standard_two_signatures_fail_when_none_matches(client, standard):
    secret, body = standard
    headers = signing.standard_headers(body, signing.whsec(), extra_signatures=["v1," + "B" * 43 + "="])
    _assert_rejected(client.post("/webhooks/std", data=body, headers=headers), "bad_signature")


def test_standard_one_changed_byte_fails(client, standard):
    secret, body = standard
    headers = signing.standard_headers(body, secret)
    _assert_rejected(client.post("/webhooks/std", data=signing.flip_one_byte(body), headers=headers), "bad_signature")


def test_standard_wrong_key_fails(client, standard):
    _, body = standard
    _assert_rejected(client.post("/webhooks/std", data=body, headers=signing.standard_headers(body, signing.whsec())),
                     "bad_signature")


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_missing_header_fails(client, standard, missing):
    secret, body = standard
    headers = signing.standard_headers(body, secret)
    del headers[missing]
    _assert_rejected(client.post("/webhooks/std", data=body, headers=headers), "missing_signature")


@pytest.mark.parametrize("skew", [TOO_OLD, TOO_NEW])
def test_standard_timestamp_past_tolerance_fails(client, standard, skew):
    secret, body = standard
    headers = signing.standard_headers(body, secret, timestamp=time.time() + skew)
    _assert_rejected(client.post("/webhooks/std", data=body, headers=headers), "stale_timestamp")


def test_standard_timestamp_inside_tolerance_passes(client, standard):
    secret, body = standard
    headers = signing.standard_headers(body, secret, timestamp=time.time() - 240)
    _assert_accepted(client.post("/webhooks/std", data=body, headers=headers), "items:item-0000007")


def test_standard_reserialised_json_fails(client, standard):
    secret, body = standard
    headers = signing.standard_headers(body, secret)
    reserialised = json.dumps(json.loads(body), indent=1).encode()
    assert json.loads(reserialised) == json.loads(body) and reserialised != body
    _assert_rejected(client.post("/webhooks/std", data=reserialised, headers=headers), "bad_signature")


# -- Zoom ----------------------------------------------------------------------------------


@pytest.fixture
def zoom(make_connection):
    secret = "zoom-secret-token-" + "x" * 8
    make_connection(name="zoom", connector="test-zoom-scheme", settings=TAKES_WEBHOOKS, credentials={"webhook_secret_token": secret})
    body = signing.dumps({"event": "webinar.updated", "event_ts": 1767225600000,
                          "payload": {"account_id": "acc", "object": {"id": 81234567890}}})
    return secret, body


def test_zoom_valid_signature_resyncs_the_webinar(client, zoom):
    secret, body = zoom
    _assert_accepted(client.post("/webhooks/zoom", data=body, headers=signing.zoom_headers(body, secret)),
                     "webinars:81234567890")


def test_zoom_webinar_deleted_becomes_a_soft_delete_run(client, zoom):
    secret, _ = zoom
    body = signing.dumps({"event": "webinar.deleted", "event_ts": 1767225600001,
                          "payload": {"account_id": "acc", "object": {"id": 81234567890}}})
    run = _assert_accepted(client.post("/webhooks/zoom", data=body, headers=signing.zoom_headers(body, secret)),
                           "webinars:81234567890")
    assert [entry[:3] for entry in run.params["records"]] == [["webinars", "81234567890", True]]


def test_zoom_url_validation_challenge_is_answered_and_not_stored(client, zoom):
    secret, _ = zoom
    body = signing.dumps({"event": "endpoint.url_validation", "event_ts": 1767225600000,
                          "payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}})
    response = client.post("/webhooks/zoom", data=body, headers=signing.zoom_headers(body, secret))
    assert response.status_code == 200
    expected = hmac.new(secret.encode(), b"qgg8vlvZRS6UYooatFL8Aw", hashlib.sha256).hexdigest()
    assert response.get_json() == {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected}
    assert _counts() == (0, 0)


def test_zoom_url_validation_with_a_bad_signature_is_refused(client, zoom):
    body = signing.dumps({"event": "endpoint.url_validation", "payload": {"plainToken": "abc"}})
    _assert_rejected(client.post("/webhooks/zoom", data=body, headers=signing.zoom_headers(body, "not-the-secret")),
                     "bad_signature")


def test_zoom_one_changed_byte_fails(client, zoom):
    secret, body = zoom
    _assert_rejected(client.post("/webhooks/zoom", data=signing.flip_one_byte(body),
                                 headers=signing.zoom_headers(body, secret)), "bad_signature")


def test_zoom_wrong_key_fails(client, zoom):
    _, body = zoom
    _assert_rejected(client.post("/webhooks/zoom", data=body, headers=signing.zoom_headers(body, "other-secret")),
                     "bad_signature")


@pytest.mark.parametrize("missing", ["x-zm-signature", "x-zm-request-timestamp"])
def test_zoom_missing_header_fails(client, zoom, missing):
    secret, body = zoom
    headers = signing.zoom_headers(body, secret)
    del headers[missing]
    _assert_rejected(client.post("/webhooks/zoom", data=body, headers=headers), "missing_signature")


@pytest.mark.parametrize("skew", [TOO_OLD, TOO_NEW])
def test_zoom_timestamp_past_tolerance_fails(client, zoom, skew):
    secret, body = zoom
    headers = signing.zoom_headers(body, secret, timestamp=time.time() + skew)
    _assert_rejected(client.post("/webhooks/zoom", data=body, headers=headers), "stale_timestamp")


def test_zoom_reserialised_json_fails(client, zoom):
    secret, body = zoom
    reserialised = json.dumps(json.loads(body)).encode()  # ", " and ": " instead of compact
    assert reserialised != body
    _assert_rejected(client.post("/webhooks/zoom", data=reserialised, headers=signing.zoom_headers(body, secret)),
                     "bad_signature")


# -- HighLevel -----------------------------------------------------------------------------


@pytest.fixture
def highlevel(make_connection):
    ed_private, ed_pem = signing.ed25519_keypair()
    rsa_private, rsa_pem = signing.rsa_keypair()
    make_connection(name="ghl", connector="test-highlevel-scheme",
                    settings={"webhook_public_key": ed_pem, "webhook_legacy_public_key": rsa_pem, **TAKES_WEBHOOKS})
    return ed_private, rsa_private


def _order(timestamp=None):
    return signing.dumps({"type": "OrderCreate", "locationId": "loc1", "webhookId": "wh-" + str(time.time_ns()),
                          "timestamp": signing.iso(time.time() if timestamp is None else timestamp),
                          "_id": "order-1", "contactId": "c1", "amount": 20})


def test_highlevel_ed25519_signature_passes(client, highlevel):
    ed_private, _ = highlevel
    body = _order()
    _assert_accepted(client.post("/webhooks/ghl", data=body, headers=signing.ghl_headers(body, ed_private)),
                     "orders:order-1")


def test_highlevel_legacy_rsa_signature_passes(client, highlevel):
    _, rsa_private = highlevel
    body = _order()
    _assert_accepted(client.post("/webhooks/ghl", data=body, headers=signing.wh_headers(body, rsa_private)),
                     "orders:order-1")


@pytest.mark.parametrize("sign", ["ed25519", "rsa"])
def test_highlevel_one_changed_byte_fails(client, highlevel, sign):
    body = _order()
    headers = signing.ghl_headers(body, highlevel[0]) if sign == "ed25519" else signing.wh_headers(body, highlevel[1])
    _assert_rejected(client.post("/webhooks/ghl", data=signing.flip_one_byte(body), headers=headers), "bad_signature")


@pytest.mark.parametrize("sign", ["ed25519", "rsa"])
def test_highlevel_wrong_key_fails(client, highlevel, sign):
    body = _order()
    if sign == "ed25519":
        headers = signing.ghl_headers(body, signing.ed25519_keypair()[0])
    else:
        headers = signing.wh_headers(body, signing.rsa_keypair()[0])
    _assert_rejected(client.post("/webhooks/ghl", data=body, headers=headers), "bad_signature")


def test_highlevel_missing_header_fails(client, highlevel):
    _assert_rejected(client.post("/webhooks/ghl", data=_order(), headers={"Content-Type": signing.JSON}),
                     "missing_signature")


@pytest.mark.parametrize("skew", [TOO_OLD, TOO_NEW])
def test_highlevel_timestamp_past_tolerance_fails(client, highlevel, skew):
    body = _order(timestamp=time.time() + skew)
    _assert_rejected(client.post("/webhooks/ghl", data=body, headers=signing.ghl_headers(body, highlevel[0])),
                     "stale_timestamp")


def test_highlevel_reserialised_json_fails(client, highlevel):
    body = _order()
    reserialised = json.dumps(json.loads(body), sort_keys=True).encode()
    assert reserialised != body
    _assert_rejected(client.post("/webhooks/ghl", data=reserialised, headers=signing.ghl_headers(body, highlevel[0])),
                     "bad_signature")


# -- HaloPSA -------------------------------------------------------------------------------


@pytest.fixture
def halo(make_connection):
    make_connection(name="halo", connector="test-halopsa-scheme", settings=TAKES_WEBHOOKS,
                    credentials={"webhook_username": "halo-hook", "webhook_password": "s3cret-pass"})
    return signing.dumps({"id": 4711, "summary": "printer on fire"})


def test_halopsa_basic_auth_passes(client, halo):
    _assert_accepted(client.post("/webhooks/halo", data=halo, headers=signing.basic_headers("halo-hook", "s3cret-pass")),
                     "tickets:4711")


@pytest.mark.parametrize("username,password", [("halo-hook", "s3cret-pasS"), ("other", "s3cret-pass")])
def test_halopsa_wrong_credentials_fail(client, halo, username, password):
    _assert_rejected(client.post("/webhooks/halo", data=halo, headers=signing.basic_headers(username, password)),
                     "bad_signature")


def test_halopsa_missing_authorization_fails(client, halo):
    _assert_rejected(client.post("/webhooks/halo", data=halo, headers={"Content-Type": signing.JSON}),
                     "missing_signature")


def test_halopsa_credentials_are_not_kept_with_the_delivery(client, halo):
    client.post("/webhooks/halo", data=halo, headers=signing.basic_headers("halo-hook", "s3cret-pass"))
    delivery = db.session.execute(select(WebhookDelivery)).scalar_one()
    assert "authorization" not in {k.lower() for k in delivery.headers}
    assert "s3cret" not in json.dumps(delivery.headers)
