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
