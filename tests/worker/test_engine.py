"""The engine, run in-process against the sandbox connector (no HTTP)."""
import json

from sqlalchemy import func, select

from webapp import progress, runs
from webapp.extensions import db
from webapp.models import CANCELLED, COMPLETED, FAILED, Connection, Record, Run, RunEvent
from webapp.progress import read_snapshot
from worker.engine import execute_run


def _sync(conn, redis=None, on_progress=None, **trigger_args):
    run = runs.trigger(conn, enqueue=False, **trigger_args).run
    status = execute_run(run.id, redis_client=redis, worker_name="test", on_progress=on_progress)
    db.session.expire_all()
    return status, db.session.get(Run, run.id)


def _live_ids(conn):
    return set(db.session.scalars(select(Record.external_id).where(
        Record.connection_id == conn.id, Record.deleted_at.is_(None))))


def _set(conn, **settings):
    db.session.get(Connection, conn.id).settings = dict(conn.settings, **settings)
    db.session.commit()


def test_full_sync_stores_every_record_and_counts_them(app, make_connection, redis):
    conn = make_connection(settings={"records": 950, "page_size": 100})
    status, run = _sync(conn, redis)
    assert status == COMPLETED and run.status == COMPLETED
    assert run.counters == {"seen": 950, "created": 950, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0}
    assert run.processed == run.total == 950
    assert len(_live_ids(conn)) == 950
    record = db.session.scalars(select(Record).where(Record.external_id == "item-0000007")).one()
    assert record.data["name"] == "Item 7" and len(record.content_hash) == 32


def test_second_sync_detects_unchanged_then_changed_records_by_hash(app, make_connection, redis):
    conn = make_connection(settings={"records": 300, "page_size": 64})
    _sync(conn, redis)
    _, again = _sync(conn, redis)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 300)
    _set(conn, version=1)
    _, changed = _sync(conn, redis)
    assert (changed.created, changed.updated, changed.unchanged) == (0, 300, 0)
    assert db.session.scalar(select(func.count()).select_from(Record)) == 300


def test_malformed_records_are_skipped_and_listed_with_their_keys(app, make_connection, redis):
    conn = make_connection(settings={"records": 100, "page_size": 30, "bad_every": 10})
    status, run = _sync(conn, redis)
    assert status == COMPLETED
    assert run.failed == 10 and run.created == 90
    errors = db.session.scalars(select(RunEvent).where(RunEvent.run_id == run.id,
                                                       RunEvent.kind == "record_error")).all()
    assert len(errors) == 10
    assert all("missing primary key" in e.message and e.stream == "items" for e in errors)
    assert len(_live_ids(conn)) == 90


def test_successful_full_sync_soft_deletes_what_it_did_not_see(app, make_connection, redis):
    conn = make_connection(settings={"records": 120, "page_size": 50})
    _sync(conn, redis)
    _set(conn, records=100)
    status, run = _sync(conn, redis)
    assert status == COMPLETED and run.deleted == 20
    assert _live_ids(conn) == {f"item-{i:07d}" for i in range(100)}
    _set(conn, records=110)
    _, back = _sync(conn, redis)
    assert back.updated == 10 and len(_live_ids(conn)) == 110  # deleted records can come back


def test_a_first_import_keeps_a_record_another_writer_stored_meanwhile(app, make_connection, redis):
    # A stream with nothing stored when the run began: every live record at the end was written
    # during the run, by it or by another writer (a webhook's record run); the end's sweep is skipped.
    from sqlalchemy.orm import Session

    from worker import store

    conn = make_connection(settings={"records": 120, "page_size": 50})

    def another_writer(snapshot):
        if snapshot["processed"] == 50:
            with Session(db.engine) as other:
                store.write_page(other, connection_id=conn.id, stream="items", run_id=999,
                                 keyed_records=[("pushed-by-webhook", {"id": "pushed-by-webhook"})])
                other.commit()

    status, run = _sync(conn, redis, on_progress=another_writer)
    assert status == COMPLETED and run.deleted == 0 and run.created == 120
    assert _live_ids(conn) == {f"item-{i:07d}" for i in range(120)} | {"pushed-by-webhook"}
    # The next full sync lists the stream as it is now, and what it does not list is gone.
    status, run = _sync(conn, redis)
    assert status == COMPLETED and run.deleted == 1 and "pushed-by-webhook" not in _live_ids(conn)


def test_failed_full_sync_deletes_nothing(app, make_connection, redis):
    conn = make_connection(settings={"records": 120, "page_size": 50})
    _sync(conn, redis)
    _set(conn, records=100, fail_at_offset=50)
    status, run = _sync(conn, redis, max_attempts=1)
    assert status == FAILED and run.error_class == "transient" and run.deleted == 0
    assert len(_live_ids(conn)) == 120


def test_cancel_stops_at_the_next_page_and_keeps_what_was_written(app, make_connection, redis):
    conn = make_connection(settings={"records": 1000, "page_size": 100})
    _sync(conn, redis)
    _set(conn, records=500)  # a full sync that completed would delete 500 records
    pages = []

    def cancel_after_second_page(snapshot):
        pages.append(snapshot["processed"])
        if snapshot["processed"] == 200:
            runs.cancel(run_id(), requested_by="test")

    run_id = lambda: db.session.scalars(select(Run.id).order_by(Run.id.desc())).first()  # noqa: E731
    status, run = _sync(conn, redis, on_progress=cancel_after_second_page)
    assert status == CANCELLED and run.status == CANCELLED
    assert run.processed == 300  # the page in flight when cancel landed is the last one
    assert run.deleted == 0 and len(_live_ids(conn)) == 1000
    assert not runs.finish(run.id, run.attempt, COMPLETED)  # a finishing worker can't flip it


def test_auth_error_fails_at_once_and_marks_connection_needs_reauth(app, make_connection, redis):
    conn = make_connection(settings={"auth_fail": True})
    status, run = _sync(conn, redis, max_attempts=5)
    assert status == FAILED and run.attempt == 1 and run.error_class == "auth"
    assert db.session.get(Connection, conn.id).health == "needs_reauth"


def test_configuration_error_fails_with_an_actionable_message(app, make_connection, redis):
    conn = make_connection(connector="sandbox")
    status, run = _sync(conn, redis, streams=["no-such-stream"])
    assert status == FAILED and run.error_class == "config"
    assert "has no stream 'no-such-stream'; known: items" in run.error_message


def test_transient_failure_requeues_and_resumes_from_checkpoint(app, make_connection, redis):
    conn = make_connection(settings={"records": 250, "page_size": 50, "fail_at_offset": 150})
    run = runs.trigger(conn, enqueue=False).run
    assert execute_run(run.id, redis_client=redis, worker_name="w1") == "queued"
    db.session.expire_all()
    queued = db.session.get(Run, run.id)
    assert queued.checkpoint["state"] == {"offset": 150} and queued.created == 150
    _set(conn, fail_at_offset=None)
    assert execute_run(run.id, redis_client=redis, worker_name="w2") == COMPLETED
    db.session.expire_all()
    done = db.session.get(Run, run.id)
    assert done.attempt == 2 and done.created == 250 and done.seen == 250 and done.deleted == 0
    assert len(_live_ids(conn)) == 250


def _published(redis, conn):
    """Run a sync of `conn` and return every progress snapshot it published, in order."""
    pubsub = redis.pubsub()
    run_id = runs.trigger(conn, enqueue=False).run.id
    pubsub.subscribe(progress.channel(run_id, progress.database_of(redis)))
    pubsub.get_message(timeout=1)
    execute_run(run_id, redis_client=redis, worker_name="t")
    messages = []
    while not messages or messages[-1]["status"] != COMPLETED:  # the last one the run publishes
        m = pubsub.get_message(timeout=30)
        assert m is not None, f"no progress message after {messages[-1:] or 'none'}"
        if m["type"] == "message":
            messages.append(json.loads(m["data"]))
    pubsub.close()
    return run_id, messages


def test_progress_is_published_to_redis_and_persisted_on_the_row(app, make_connection, redis):
    conn = make_connection(settings={"records": 400, "page_size": 100})
    run_id, messages = _published(redis, conn)
    percents = [m["percent"] for m in messages if m["phase"].startswith("fetching")]
    assert percents == [25.0, 50.0, 75.0]
    # A first import has nothing to sweep for deletions at its end: the last page's words and
    # "finalizing" come with the run's last snapshot, one round trip to Redis a run fewer.
    assert not any(m["phase"] == "finalizing" for m in messages)
    assert [m["message"] for m in messages[-1]["messages"][-3:-1]] == [
        "items: +100 records (100 new, 0 changed, 0 unchanged)", "finalizing"]
    assert messages[-1]["status"] == COMPLETED and messages[-1]["counters"]["created"] == 400
    assert {"rate", "eta_seconds", "total", "messages", "phase"} <= set(messages[-1])
    snapshot = read_snapshot(redis, run_id)
    assert snapshot["status"] == COMPLETED and snapshot["processed"] == 400
    row = db.session.get(Run, run_id)
    assert row.processed == 400 and row.total == 400 and row.phase == "done"


def test_a_resync_says_it_is_finalizing_before_its_sweep_for_deletions(app, make_connection, redis):
    conn = make_connection(settings={"records": 400, "page_size": 100})
    _published(redis, conn)
    _, messages = _published(redis, conn)  # records stored now: the end sweeps for deletions
    # The last page's words come with the finalizing snapshot, published at once after it.
    finalizing = next(m for m in messages if m["phase"] == "finalizing")
    assert finalizing["percent"] == 100.0 and finalizing["processed"] == 400
    assert [m["message"] for m in finalizing["messages"][-2:]] == [
        "items: +100 records (0 new, 0 changed, 100 unchanged)", "finalizing"]
    assert messages[-1]["status"] == COMPLETED and messages[-1]["counters"]["unchanged"] == 400


def test_engine_runs_without_redis(app, make_connection):
    conn = make_connection(settings={"records": 50, "page_size": 20})
    status, run = _sync(conn, redis=None)
    assert status == COMPLETED and run.created == 50


def test_incremental_cursor_advances_only_on_success(app, make_connection, redis):
    from webapp.models import StreamState

    conn = make_connection(settings={"records": 100, "page_size": 40})
    _sync(conn, redis, mode="incremental")
    state = db.session.get(StreamState, (conn.id, "items"))
    assert state.cursor == "2026-01-01T00:01:39Z"  # item 99's updated_at
    _set(conn, version=1, fail_at_offset=40)
    status, _ = _sync(conn, redis, mode="incremental", max_attempts=1)
    assert status == FAILED
    db.session.expire_all()
    assert db.session.get(StreamState, (conn.id, "items")).cursor == "2026-01-01T00:01:39Z"


def test_a_runs_end_reads_nothing_back_of_the_row_it_just_finished(app, make_connection):
    """The roll-ups and what follows the end (metrics, issues, the next waiting sync) take the
    finished row from the finishing UPDATE's RETURNING: no SELECT of it afterwards."""
    from sqlalchemy import event

    conn = make_connection(settings={"records": 30, "page_size": 10})
    run_id = runs.trigger(conn, enqueue=False).run.id
    statements = []

    def capture(_conn, _cursor, statement, _parameters, _context, _many):
        statements.append(" ".join(statement.split()))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        assert execute_run(run_id, worker_name="t") == COMPLETED
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    [finishing] = [i for i, s in enumerate(statements) if s.startswith("UPDATE runs SET status=")
                   and "RETURNING runs.connection_id" in s.replace("RETURNING connection_id", "RETURNING runs.connection_id")]
    read_back = [s for s in statements[finishing + 1:] if s.startswith("SELECT") and "runs.finished_at" in s]
    assert read_back == []
    run = db.session.get(Run, run_id)
    assert (run.status, run.created) == (COMPLETED, 30)
