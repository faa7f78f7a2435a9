"""The engine through the shared HTTP client, over real HTTP to a local simulator."""
import pytest
from sqlalchemy import select

from tests.simulators.harness import RecordsAPI, SimulatorServer, make_records
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, Connection, Record, Run, RunEvent
from worker.engine import execute_run


@pytest.fixture
def api():
    simulator = RecordsAPI(make_records(450), auth_token="sekrit-token", page_size_max=1000)
    with SimulatorServer(simulator) as server:
        simulator.server = server
        yield simulator


def _rest_connection(make_connection, api, page_size=100, **stream_overrides):
    stream = {"path": "/items", "records_key": "items", "cursor_field": "updated_at",
              "cursor_param": "updated_since", "since_param": "since", "until_param": "until",
              "pagination": {"type": "page", "page_size": page_size}}
    stream.update(stream_overrides)
    return make_connection(name="api", connector="rest",
                           settings={"base_url": api.server.url, "streams": {"items": stream}},
                           credentials={"token": "sekrit-token"})


def _sync(conn, redis, **kwargs):
    run = runs.trigger(conn, enqueue=False, **kwargs).run
    status = execute_run(run.id, redis_client=redis, worker_name="t")
    db.session.expire_all()
    return status, db.session.get(Run, run.id)


def _stored(conn):
    return {r.external_id: r.data for r in db.session.scalars(
        select(Record).where(Record.connection_id == conn.id, Record.deleted_at.is_(None)))}


def test_rate_limited_page_waits_out_retry_after_and_completes(app, make_connection, redis, api):
    conn = _rest_connection(make_connection, api)
    api.server.faults.rate_limit(retry_after=1)
    status, run = _sync(conn, redis)
    assert status == COMPLETED and run.created == 450
    log = api.server.log.entries("/items")
    limited = next(i for i, e in enumerate(log) if e.status == 429)
    assert log[limited + 1].time - log[limited].time >= 1.0  # nothing before the time it named


def test_burst_of_503_is_retried_with_backoff_and_the_run_completes(app, make_connection, redis, api):
    conn = _rest_connection(make_connection, api)
    api.server.faults.status(503, times=3)
    status, run = _sync(conn, redis)
    assert status == COMPLETED and run.attempt == 1 and run.created == 450
    assert [e.status for e in api.server.log.entries("/items")][:4] == [503, 503, 503, 200]


def test_outage_longer_than_retries_requeues_the_run_to_resume(app, make_connection, redis, api):
    conn = _rest_connection(make_connection, api)
    status, run = _sync(conn, redis)  # pages 1-5 stored
    api.upsert({"id": 500, "name": "new", "updated_at": "2024-01-01T01:00:00Z"})
    api.server.faults.status(503, times=app.config["HTTP_MAX_RETRIES"] + 1)
    status, run = _sync(conn, redis)
    assert status == "queued" and run.error_class == "transient" and run.attempt == 1


def test_unauthorized_fails_at_once_and_marks_connection_needs_reauth(app, make_connection, redis, api):
    conn = _rest_connection(make_connection, api)
    api.revoke_tokens()
    status, run = _sync(conn, redis, max_attempts=5)
    assert status == FAILED and run.error_class == "auth" and run.attempt == 1
    assert len(api.server.log.entries("/items")) == 1  # no retry storm
    assert db.session.get(Connection, conn.id).health == "needs_reauth"
    assert "sekrit-token" not in (run.error_message or "")


def test_malformed_records_are_skipped_and_listed_while_the_rest_are_stored(app, make_connection, redis, api):
    api.add_malformed({"name": "no id here", "updated_at": "2024-01-01T00:00:01Z"})
    api.add_malformed(["not", "an", "object"])
    conn = _rest_connection(make_connection, api)
    status, run = _sync(conn, redis)
    assert status == COMPLETED and run.created == 450 and run.failed == 2
    errors = db.session.scalars(select(RunEvent.message).where(
        RunEvent.run_id == run.id, RunEvent.kind == "record_error")).all()
    assert len(errors) == 2 and any("missing primary key" in e for e in errors)
    assert len(_stored(conn)) == 450


def test_incremental_run_picks_up_changes_sharing_the_boundary_cursor(app, make_connection, redis, api):
    boundary = "2024-01-01T00:07:30Z"  # the timestamp of record 450, the newest
    api.upsert({"id": 449, "name": "item 449", "updated_at": boundary})  # two records on the boundary
    conn = _rest_connection(make_connection, api)
    status, first = _sync(conn, redis, mode="incremental")
    assert status == COMPLETED and first.created == 450
    # Same second as the stored cursor: a `>` cursor would skip all three of these.
    api.upsert({"id": 450, "name": "renamed at the boundary", "updated_at": boundary})
    api.upsert({"id": 451, "name": "new at the boundary", "updated_at": boundary})
    status, second = _sync(conn, redis, mode="incremental")
    assert status == COMPLETED
    assert (second.seen, second.created, second.updated, second.unchanged) == (3, 1, 1, 1)
    stored = _stored(conn)
    assert stored["450"]["name"] == "renamed at the boundary" and "451" in stored
    assert len(stored) == 451


def test_failed_incremental_run_leaves_the_cursor_where_it_was(app, make_connection, redis, api):
    from webapp.models import StreamState

    conn = _rest_connection(make_connection, api, page_size=50)
    _sync(conn, redis, mode="incremental")
    cursor = db.session.get(StreamState, (conn.id, "items")).cursor
    for i in range(300, 460):
        api.upsert({"id": i, "name": f"changed {i}", "updated_at": f"2024-01-02T00:{i // 60 % 60:02d}:{i % 60:02d}Z"})
    api.revoke_tokens()
    status, _ = _sync(conn, redis, mode="incremental", max_attempts=1)
    assert status == FAILED
    db.session.expire_all()
    assert db.session.get(StreamState, (conn.id, "items")).cursor == cursor


def test_range_mode_filters_by_date_and_never_deletes(app, make_connection, redis, api):
    conn = _rest_connection(make_connection, api)
    _sync(conn, redis)
    status, run = _sync(conn, redis, mode="range", params={"since": "2024-01-01T00:01:00Z",
                                                           "until": "2024-01-01T00:02:00Z"})
    assert status == COMPLETED and run.seen == 60 and run.deleted == 0
    assert len(_stored(conn)) == 450


def test_secrets_do_not_leak_into_run_errors_or_logs(app, make_connection, redis, api):
    conn = _rest_connection(make_connection, api)
    api.server.faults.status(500, body={"message": "internal"}, times=50)
    status, run = _sync(conn, redis, max_attempts=1)
    assert status == FAILED
    texts = [run.error_message] + db.session.scalars(select(RunEvent.message).where(RunEvent.run_id == run.id)).all()
    assert not any("sekrit-token" in (t or "") for t in texts)
    raw = db.session.execute(select(Connection.credentials_encrypted).where(Connection.id == conn.id)).scalar_one()
    assert "sekrit" not in raw  # encrypted at rest


def test_malformed_records_from_an_api_are_skipped_and_logged_and_the_rest_stored(app, make_connection, redis):
    simulator = RecordsAPI(make_records(4), auth_token="sekrit-token")
    simulator.add_malformed(["not", "an", "object"])
    simulator.add_malformed({"name": "has no id", "updated_at": "2024-01-01T00:00:00Z"})
    simulator.upsert({"id": 1.5, "name": "float id"})
    with SimulatorServer(simulator) as server:
        simulator.server = server
        conn = _rest_connection(make_connection, simulator, page_size=3)
        status, run = _sync(conn, redis)
    assert status == COMPLETED and run.created == 4 and run.failed == 3
    assert set(_stored(conn)) == {"1", "2", "3", "4"}
    errors = db.session.scalars(select(RunEvent).where(RunEvent.run_id == run.id,
                                                       RunEvent.kind == "record_error")).all()
    reasons = sorted(e.message for e in errors)
    assert len(errors) == 3
    assert any("list, not an object" in r for r in reasons)
    assert any("missing primary key 'id'" in r for r in reasons)
    assert sorted(e.record_key for e in errors if e.record_key and "record #" not in e.record_key) == ["1.5"]
