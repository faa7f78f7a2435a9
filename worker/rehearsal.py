"""A rehearsal of the run lifecycle in the worker process, before its first fork.

A work horse starts with its parent's memory, and SQLAlchemy keeps its compiled
statements there (the Engine's compiled cache, and the mappers' for ORM flushes). A parent
that never ran a job forks children that compile every statement of a run afresh and throw
them away: that was half of a no-op run's CPU in a forked work horse (docs/PERFORMANCE.md,
"Cheap runs"). So the worker runs real runs once, through the engine's own code paths
(worker.engine.execute_run), against the real database, inside one outer transaction
that is always rolled back: every statement a run makes is compiled and cached with the
very cache key a real run's statement will have, and nothing of the rehearsal is ever
committed or seen by another process.

What the rehearsal must not leave behind:
  - rows: the connection and runs it makes are inserted in the outer transaction, and the
    run's own commits are savepoints inside it (`join_transaction_mode="create_savepoint"`);
    on SQLite the outer transaction is begun by an INSERT first, because pysqlite only
    emits BEGIN before a DML statement and a SAVEPOINT outside a transaction would be
    committed by its RELEASE;
  - Redis: no client is given, so no progress is published and nothing is enqueued;
  - metrics and log lines naming a run that never existed: muted while it runs;
  - database connections: the pool is disposed afterwards, so no fork inherits one.
A rehearsal that fails costs nothing but its warning: the work horses then start cold.
"""
import logging
import threading
import uuid

from sqlalchemy import insert
from sqlalchemy.orm import Session

from webapp import metrics
from webapp.error_words import describe
from webapp.extensions import db
from webapp.models import QUEUED, Connection, Run
from webapp.runs import params_key

log = logging.getLogger(__name__)
# Two pages of one record each, synced twice: the first run creates the records, the
# second finds them unchanged, so both write paths of a page are compiled; then a record
# run (mode "record", what a webhook starts) for one of them.
REHEARSAL_SETTINGS = {"records": 2, "page_size": 1}


def rehearse(app):
    """Rehearse three runs; True when all completed. Never raises."""
    outcome = False
    try:
        with app.app_context():
            try:
                with _quiet(), metrics.muted(), db.engine.connect() as conn:
                    outer = conn.begin()
                    try:
                        outcome = _rehearse_in(conn)
                    finally:
                        db.session.remove()
                        outer.rollback()
            finally:
                db.engine.dispose()  # no pooled connection may reach a fork
    except Exception as exc:  # the worker must start all the same
        log.warning("The rehearsal of a run before forking failed, so each job compiles its statements "
                    "afresh: %s", describe(exc))
        return False
    if not outcome:
        log.warning("The rehearsal of a run before forking did not complete, so some statements stay uncompiled.")
    return outcome


def _rehearse_in(conn):
    from flask import current_app

    from worker.engine import execute_run

    # A heartbeat would write from its own connection: it could not see the uncommitted
    # run (the rehearsal would end as "lost"), and on SQLite it would wait for our lock.
    config = current_app.config
    heartbeat = config["HEARTBEAT_SECONDS"]
    config["HEARTBEAT_SECONDS"] = 3600.0
    try:
        return _runs(conn, execute_run)
    finally:
        config["HEARTBEAT_SECONDS"] = heartbeat
        _join_run_threads()


def _runs(conn, execute_run):
    # A DML statement first, on the outer transaction (see the module's docstring).
    connection_id = conn.execute(insert(Connection).values(
        name=f"rehearsal-{uuid.uuid4().hex}", connector="sandbox", settings=REHEARSAL_SETTINGS,
    )).inserted_primary_key[0]
    db.session.registry.set(Session(bind=conn, join_transaction_mode="create_savepoint"))
    full = dict(mode="full", params={}, trigger="api", streams=[], params_key=params_key("full", None, None))
    # A webhook's record run too: one per webhook is the commonest run of all.
    record = dict(mode="record", record_key="items:item-0000000", trigger="webhook", streams=[],
                  params={"stream": "items", "record_id": "item-0000000", "deleted": False})
    statuses = []
    for fields in (full, full, record):
        run_id = conn.execute(insert(Run).values(
            connection_id=connection_id, status=QUEUED, attempt=0, max_attempts=1, **fields,
        )).inserted_primary_key[0]
        statuses.append(execute_run(run_id, redis_client=None, worker_name=None))
    return statuses == ["completed"] * 3


def _join_run_threads():
    """A fork must not happen while the rehearsal's threads (page fetchers, heartbeats) are
    still winding down."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name.startswith(("page-fetch", "heartbeat-run-")):
            thread.join(timeout=2)


class _quiet:
    """Its log lines would name runs that never existed."""

    def __enter__(self):
        self.before = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(self.before)
