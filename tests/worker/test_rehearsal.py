"""The worker's rehearsal of a run before forking (worker/rehearsal.py): it leaves nothing
behind, and a run in a forked child of the rehearsed process compiles no statement."""
import json
import os

from sqlalchemy import event, func, select

from webapp import metrics, runs
from webapp.extensions import db
from webapp.models import Connection, ConnectionIssue, Record, Run, RunEvent, StreamState
from worker.rehearsal import rehearse

TABLES = (Connection, Run, RunEvent, Record, StreamState, ConnectionIssue)


def _counts():
    counts = {model.__tablename__: db.session.scalar(select(func.count()).select_from(model)) for model in TABLES}
    db.session.rollback()
    return counts


def test_the_rehearsal_completes_and_leaves_no_row_and_no_metric(app, make_connection):
    make_connection(settings={"records": 3})
    before = _counts()
    metrics._buffer.take()  # what the fixture's setup counted
    heartbeat = app.config["HEARTBEAT_SECONDS"]
    assert rehearse(app) is True
    assert _counts() == before
    assert app.config["HEARTBEAT_SECONDS"] == heartbeat  # lengthened during the rehearsal only
    assert dict(metrics._buffer.take()) == {}
    # The pool was disposed: nothing is checked out or kept for a fork to inherit.
    assert db.engine.pool.checkedout() == 0


def test_a_run_forked_after_the_rehearsal_compiles_no_statement(app, make_connection):
    conn = make_connection(settings={"records": 5, "page_size": 2})
    run_id = runs.trigger(conn, trigger="api", enqueue=False).run.id
    assert _forked_run(app, run_id) == {"status": "completed", "compiled": []}
    db.session.expire_all()
    assert db.session.get(Run, run_id).created == 5


def _forked_run(app, run_id):
    """Rehearse, then run `run_id` in a forked child as a work horse does; returns its
    status and the statements it had to compile."""
    db.session.remove()
    assert rehearse(app) is True
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the work horse: what SynchubWorker.main_work_horse does, then the run
        try:
            os.close(read)
            db.engine.dispose(close=False)
            compiled = []

            @event.listens_for(db.engine, "after_cursor_execute")
            def _note(_conn, _cursor, statement, _params, context, _many):
                # The roll-up upsert is one text() statement per duration bin (webapp/rollups.py):
                # which bin a run lands in depends on its duration, and a text statement is
                # cheap to compile (no expression tree), so the rehearsal does not warm every bin.
                if context.cache_hit is not context.cache_hit.CACHE_HIT \
                        and not statement.startswith("INSERT INTO run_rollups"):
                    compiled.append(f"{context.cache_hit.name}: {statement[:80]}")

            from worker.engine import execute_run

            status = execute_run(run_id, redis_client=None, worker_name="test")
            os.write(write, json.dumps({"status": status, "compiled": compiled}).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_record_run_forked_after_the_rehearsal_compiles_no_statement(app, make_connection):
    from webapp.webhooks import dispatch  # noqa: F401  (what a worker has imported before forking)

    conn = make_connection(settings={"records": 5})
    run = Run(connection_id=conn.id, mode="record", record_key="items:item-0000003", trigger="webhook",
              params={"stream": "items", "record_id": "item-0000003", "deleted": False}, status="queued")
    db.session.add(run)
    db.session.commit()
    assert _forked_run(app, run.id) == {"status": "completed", "compiled": []}
