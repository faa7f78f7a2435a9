"""A record that cannot be stored is identified on the run page: by its key, or, when it has
none, by its position in the run and how it begins (issue 18: the page showed "—")."""
from webapp import runs
from webapp.extensions import db
from webapp.models import RunEvent
from worker.engine import execute_run


def test_a_record_without_a_key_is_named_by_its_position_and_an_excerpt(app, make_connection, redis):
    connection = make_connection(name="demo", settings={"records": 30, "page_size": 7, "bad_every": 10})
    run = runs.trigger(connection, enqueue=False).run
    assert execute_run(run.id, redis_client=redis, worker_name="test") == "completed"
    errors = db.session.query(RunEvent).filter_by(run_id=run.id, kind="record_error").order_by(RunEvent.id).all()
    assert [e.record_key for e in errors] == ["record #10 of the run", "record #20 of the run", "record #30 of the run"]
    assert errors[0].message == "missing primary key 'id'; it begins {\"name\": \"broken item 9\"}"


def test_the_activity_log_says_each_thing_once(app, make_connection, redis):
    from webapp.run_view import activity, run_state
    from webapp.models import Run

    connection = make_connection(name="demo", settings={"records": 5, "fail_at_offset": 0})
    run = runs.trigger(connection, enqueue=False, max_attempts=1).run
    assert execute_run(run.id, redis_client=redis, worker_name="host-1") == "failed"
    run = db.session.get(Run, run.id)
    lines = [line["message"] for line in activity(run.id, run_state(run, client=redis))]
    assert sum(line.startswith("attempt 1 started") for line in lines) == 1, lines
    assert "attempt 1 started on host-1" in lines
    assert sum(line.startswith("failed") for line in lines) == 1, lines


def test_progress_covers_every_stream_of_the_run(app, make_connection, redis):
    """Overall progress counts each stream for an equal share: it is not 100% when the first
    of three streams is read (issue 18: a Zoom full sync sat at 100% for 13 minutes)."""
    from tests.simulators.harness import RecordsAPI, SimulatorServer, make_records

    simulator = RecordsAPI(make_records(120), auth_token="tok", page_size_max=1000)
    with SimulatorServer(simulator) as server:
        stream = {"path": "/items", "records_key": "items", "total_key": "total",
                  "pagination": {"type": "page", "page_size": 40}}
        connection = make_connection(name="three", connector="rest", credentials={"token": "tok"}, settings={
            "base_url": server.url, "streams": {"a": stream, "b": stream, "c": stream}})
        run = runs.trigger(connection, enqueue=False).run
        snapshots = []
        assert execute_run(run.id, redis_client=redis, worker_name="t", on_progress=snapshots.append) == "completed"
    after_a = next(s for s in snapshots if s["phase"] == "fetching a" and s["streams"][0]["done"])
    assert after_a["percent"] == 33.3
    assert [(x["name"], x["processed"], x["total"], x["done"]) for x in after_a["streams"]] == [
        ("a", 120, 120, True), ("b", 0, None, False), ("c", 0, None, False)]
    middle_of_b = next(s for s in snapshots if s["streams"][1]["processed"] == 40)
    assert middle_of_b["percent"] == 44.4  # a in full, a third of b
    percents = [s["percent"] for s in snapshots if s["percent"] is not None]
    assert percents == sorted(percents) and percents[-1] == 100.0
