"""S2: Zoom webinars into the database, manual-only, through real RQ workers; and Zoom's
webhooks on the real connector, sent by the simulator to the hub over HTTP.

Delta is Zoom's complete listing with only changed records written (Zoom has no
changed-since filter), so a successful delta also soft-deletes the webinars Zoom no longer
lists — which is what S2 asks of it ("deleted ones soft-deleted")."""
import signal
from datetime import timedelta

import pytest

from tests.scenarios.conftest import dispatched, finished, one_backend, records
from tests.simulators.zoom import ZoomAPI
from tests.support import wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, QUEUED, Run, RunEvent, utcnow

CREDENTIALS = {"account_id": "zoom-account", "client_id": "zoom-client", "client_secret": "zoom-client-secret"}


def _connection(make_connection, server, connector="zoom", **settings):
    return make_connection(name="zoom-s2", connector=connector, schedule="manual", credentials=CREDENTIALS,
                           settings={"base_url": server.url + "/v2", "token_url": server.url + "/oauth/token",
                                     **settings})


def _assert_stored_exactly(conn, api):
    stored = records(conn.id, "webinars")
    valid = {str(i): api.webinars[i] for i in api.valid_ids()}
    assert set(stored) == set(valid)
    for key, record in stored.items():  # record by record, field by field
        assert record.data == valid[key]
    return stored


@one_backend
def test_full_then_delta_updates_changed_and_soft_deletes_deleted_webinars(app, make_connection, workers, serve):
    api = ZoomAPI(webinars=100, seed=21, malformed_every=25)
    conn = _connection(make_connection, serve(api), page_size=30)
    with pytest.raises(runs.TriggerRefused):  # manual-only: no schedule or event may start it
        runs.trigger(conn, trigger="schedule", streams=["webinars"])
    workers.start()

    full = finished(runs.trigger(conn, trigger="manual", streams=["webinars"]).run.id)
    assert full.status == COMPLETED and (full.created, full.failed) == (96, 4)
    logged = db.session.scalars(db.select(RunEvent).where(RunEvent.run_id == full.id,
                                                          RunEvent.kind == "record_error")).all()
    assert len(logged) == 4 and all(e.message.startswith("invalid webinar") and e.stream == "webinars" for e in logged)
    before = {k: (r.content_hash, r.last_changed_at) for k, r in _assert_stored_exactly(conn, api).items()}

    changed = {str(i) for i in api.change(fraction=0.05, seed=5)}
    deleted = {str(i) for i in api.delete(fraction=0.01, seed=6)}
    assert (len(changed), len(deleted)) == (5, 1) and not changed & deleted

    delta = finished(runs.trigger(conn, mode="incremental", trigger="manual", streams=["webinars"]).run.id)
    assert delta.status == COMPLETED
    assert (delta.created, delta.updated, delta.unchanged, delta.deleted, delta.failed) == (0, 5, 90, 1, 4)
    stored = _assert_stored_exactly(conn, api)
    for key, record in stored.items():
        if key in changed:
            assert record.content_hash != before[key][0] and record.data["topic"].endswith("(updated)")
        else:  # the rest untouched: same content, not rewritten
            assert (record.content_hash, record.last_changed_at) == before[key]
    gone = records(conn.id, "webinars", deleted=True)
    assert set(gone) == deleted and all(r.last_run_id == delta.id for r in gone.values())


@one_backend
@pytest.mark.parametrize("connector", ["zoom", "zoom_declared"])  # the Python connector and its declared port
def test_resume_after_sigkill_restarts_an_expired_listing_without_duplicates(app, make_connection, workers, serve,
                                                                             connector):
    api = ZoomAPI(webinars=200, seed=22)
    api.latency = 0.06
    api.server = serve(api)
    conn = _connection(make_connection, api.server, connector, page_size=10)
    pool = [workers.start(), workers.start()]  # the survivor is ready when the other dies
    run_id = runs.trigger(conn, trigger="manual", streams=["webinars"]).run.id

    def mid_listing():
        db.session.commit()
        run = db.session.get(Run, run_id)
        db.session.refresh(run)
        return run if run.processed >= 50 else None

    owner = wait_for(mid_listing, timeout=60, message="the listing to be under way").worker_name
    next(w for w in pool if w.name == owner).kill(signal.SIGKILL)  # worker and work horse die mid-listing
    crashed = db.session.get(Run, run_id)
    db.session.refresh(crashed)
    assert crashed.status == "running" and crashed.checkpoint["state"]["token"]
    api.expire_page_tokens()  # the restart comes more than 15 minutes later
    later = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    assert runs.sweep_stale(now=later) == [(run_id, QUEUED)]  # what the supervisor does

    done = finished(run_id, timeout=90)
    assert done.status == COMPLETED and done.attempt == 2 and done.worker_name != owner
    assert done.created == 200 and done.deleted == 0  # every webinar created once
    assert done.unchanged > 0  # the pages read again after the restart came back unchanged
    _assert_stored_exactly(conn, api)
    listing = api.server.log.entries("/v2/users")
    refused = [i for i, e in enumerate(listing) if e.status == 400]
    assert len(refused) == 1 and "next_page_token" not in listing[refused[0] + 1].args  # back to page one


@one_backend
def test_webhooks_on_the_real_connector_sync_webinars_and_registrants(app, make_connection, workers, serve):
    api = ZoomAPI(webinars=5, seed=23, registrants=(1, 2))
    api.server = serve(api)
    hub = serve(app)
    # S2 itself is manual-only; a connection that takes Zoom's webhooks says so in its policy.
    conn = make_connection(name="zoom-hooks", connector="zoom", schedule="manual",
                           credentials={**CREDENTIALS, "webhook_secret_token": api.webhook_secret},
                           settings={"base_url": api.server.url + "/v2", "token_url": api.server.url + "/oauth/token",
                                     "allowed_triggers": ["manual", "webhook"]})
    url = f"{hub.url}/webhooks/{conn.name}"
    workers.start()

    def delivered(event, webinar_id, registrant_id=None):
        answer = api.send_webhook(url, event, webinar_id, registrant_id)
        assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        (run_id,) = dispatched(answer.json())
        run = finished(run_id)
        assert run.status == COMPLETED and (run.trigger, run.mode) == ("webhook", "record")
        return run

    (created,) = api.add(1)
    run = delivered("webinar.created", created)
    assert (run.record_key, run.created) == (f"webinars:{created}", 1)
    assert records(conn.id, "webinars")[str(created)].data == api.webinars[created]

    api.change(ids=[created])
    assert delivered("webinar.updated", created).updated == 1
    assert records(conn.id, "webinars")[str(created)].data["topic"].endswith("(updated)")

    registrant = api.register(created)
    key = f"{created}:{registrant['id']}"
    run = delivered("webinar.registration_created", created, registrant["id"])
    assert (run.record_key, run.created) == (f"registrants:{key}", 1)
    assert records(conn.id, "registrants")[key].data == dict(registrant, webinar_id=created, key=key)
    fetched = api.server.log.entries(f"/v2/webinars/{created}/registrants/{registrant['id']}")
    assert [e.status for e in fetched] == [200]

    api.cancel_registration(created, registrant["id"])
    assert delivered("webinar.registration_cancelled", created, registrant["id"]).deleted == 1
    assert set(records(conn.id, "registrants", deleted=True)) == {key}

    api.delete(ids=[created])
    assert delivered("webinar.deleted", created).deleted == 1
    assert set(records(conn.id, "webinars", deleted=True)) == {str(created)}
    assert records(conn.id, "webinars") == {}
    assert api.violations == 0
