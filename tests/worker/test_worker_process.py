"""Real RQ worker processes: crash, resume and cancel, end to end."""
import signal

import pytest
from sqlalchemy import func, select

from tests.conftest import make_app
from tests.support import RedisServer, WorkerProcess, crash_mid_run_and_resume, wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import CANCELLED, COMPLETED, FAILED, Connection, Record, Run


def _run(run_id):
    db.session.expire_all()
    return db.session.get(Run, run_id)


def test_sigkilled_worker_run_is_resumed_from_checkpoint_without_loss_or_duplicates(app, make_connection, workers):
    conn = make_connection(settings={"records": 600, "page_size": 30, "latency_ms": 60})
    run_id = runs.trigger(conn).run.id
    done = crash_mid_run_and_resume(app, workers, run_id, after=180, total=600)
    assert done.attempt == 2
    ids = db.session.scalars(select(Record.external_id).where(Record.connection_id == conn.id)).all()
    assert sorted(ids) == [f"item-{i:07d}" for i in range(600)]  # every record, each once
    # Pages committed before the kill are not fetched again, so nothing is counted twice.
    assert done.created == 600 and done.seen == 600 and done.deleted == 0


def test_cancel_of_a_running_run_stops_the_worker_within_one_page(app, make_connection, workers):
    # A live worker's heartbeat must never look stale here (cancel() would then settle the row
    # itself, the other path): on a loaded machine the heartbeat thread can wait longer than the
    # suite's 2 s threshold for the CPU, so this test takes one no scheduling delay reaches.
    app.config["STALE_AFTER_SECONDS"] = 300.0
    conn = make_connection(settings={"records": 2000, "page_size": 20, "latency_ms": 100})
    run_id = runs.trigger(conn).run.id
    workers.start()
    wait_for(lambda: _run(run_id).processed >= 60, timeout=60, message="the sync to be running")
    assert runs.cancel(run_id, requested_by="test") == "running"
    at_cancel = _run(run_id).processed
    stopped = wait_for(lambda: (r := _run(run_id)).status == CANCELLED and r, timeout=10, message="the cancel")
    assert stopped.processed <= at_cancel + 20  # at most the page in flight
    kept = db.session.scalar(select(func.count()).select_from(Record).where(Record.connection_id == conn.id))
    assert kept == stopped.processed and kept < 2000
    assert not runs.finish(run_id, stopped.attempt, COMPLETED)


def test_second_trigger_while_worker_runs_returns_the_same_run(app, make_connection, workers):
    conn = make_connection(settings={"records": 200, "page_size": 20, "latency_ms": 50})
    first = runs.trigger(conn, trigger="manual").run.id
    workers.start()
    wait_for(lambda: _run(first).status == "running", timeout=30, message="the run to start")
    again = runs.trigger(conn, trigger="api")
    assert not again.created and again.run.id == first
    wait_for(lambda: _run(first).status == COMPLETED, timeout=60, message="completion")
    assert db.session.scalar(select(func.count()).select_from(Run)) == 1


def test_worker_restarted_under_its_name_after_sigkill_starts_and_works(app, make_connection, workers, redis):
    from rq import Worker

    conn = make_connection(settings={"records": 40, "page_size": 20})
    first = workers.start(name="host-a.1")
    wait_for(lambda: any(w.name == "host-a.1" for w in Worker.all(connection=redis)), timeout=30,
             message="the worker to register")
    first.kill(signal.SIGKILL)  # its registration outlives it (RQ's worker TTL)
    assert any(w.name == "host-a.1" for w in Worker.all(connection=redis))
    second = workers.start(name="host-a.1")  # what systemd's Restart=always does
    run_id = runs.trigger(conn).run.id
    wait_for(lambda: _run(run_id).status == COMPLETED, timeout=60, message="the restarted worker to run it")
    assert second.proc.poll() is None


@pytest.mark.parametrize("limit, restarts", [
    ({"SYNCHUB_WORKER_MAX_JOBS": "2"}, 1),  # after the 2nd job; the 3rd is the new process's first
    ({"SYNCHUB_WORKER_MAX_MEMORY_MB": "1"}, 3),  # every worker holds more than 1 MB: after each job
])
def test_a_worker_past_its_job_count_or_memory_ceiling_starts_afresh_in_place_and_goes_on(
        app, make_connection, workers, limit, restarts):
    worker = workers.start(env={"SYNCHUB_WORKER_FORK": "0", **limit})
    run_ids = [runs.trigger(make_connection(name=f"c{i}", settings={"records": 5})).run.id for i in range(3)]
    for run_id in run_ids:  # the last one runs only if the worker came back after its restart
        wait_for(lambda run_id=run_id: _run(run_id).status == COMPLETED, timeout=120, message=f"run {run_id}")

    def restarted():  # the last restart is logged after its run completed
        with open(worker.log_path, encoding="utf-8") as log:
            return log.read().count("starts afresh after this job")

    wait_for(lambda: restarted() >= restarts, timeout=30, message=f"{restarts} restarts logged")
    assert restarted() == restarts
    assert worker.proc.poll() is None  # the same process (pid) all along: its supervisor saw nothing


def test_the_job_time_limit_stops_a_run_with_a_sentence_and_the_worker_takes_the_next_job(
        app, make_connection, workers, monkeypatch):
    monkeypatch.setitem(app.config, "JOB_TIMEOUT_SECONDS", 3)  # read when the job is enqueued
    slow = runs.trigger(make_connection(name="slow", settings={"records": 2000, "page_size": 20,
                                                                "latency_ms": 100})).run.id
    worker = workers.start()
    stopped = wait_for(lambda: (r := _run(slow)).status == FAILED and r, timeout=120, message="the time limit")
    assert stopped.error_class == "config" and "SYNCHUB_JOB_TIMEOUT_SECONDS" in stopped.error_message
    assert stopped.processed < 2000
    quick = runs.trigger(make_connection(name="quick", settings={"records": 5})).run.id
    wait_for(lambda: _run(quick).status == COMPLETED, timeout=60, message="the next run")
    assert worker.proc.poll() is None


@pytest.mark.parametrize("fork", ["0", "1"])
def test_a_worker_outlives_a_redis_outage_at_the_end_of_a_job_and_takes_the_next_job(
        app, make_connection, tmp_path, fork):
    # RQ records a job's end in Redis; without a fork that happens in the worker process itself.
    slow = make_connection(name="slow", settings={"records": 300, "page_size": 10, "latency_ms": 50}).id
    quick = make_connection(name="quick", settings={"records": 5}).id
    private = RedisServer().start()
    worker = None
    try:
        web = make_app(app.config["SQLALCHEMY_DATABASE_URI"], private.url, str(tmp_path))
        worker = WorkerProcess(web, env={"SYNCHUB_WORKER_FORK": fork}).start()
        with web.app_context():
            first = runs.trigger(db.session.get(Connection, slow)).run.id
        wait_for(lambda: _run(first).processed >= 30, timeout=60, message="the first run to be mid-way")
        private.stop()  # really stopped: the run goes on (progress is best effort), its job's end cannot be recorded
        wait_for(lambda: _run(first).status == COMPLETED, timeout=60, message="the first run to complete")
        wait_for(lambda: "could not record the end of job" in worker.output() or worker.proc.poll() is not None,
                 timeout=30, message="the worker to meet the outage at the job's end (and wait, or end)")
        private.start()  # the same port
        assert worker.proc.poll() is None, worker.output()[-2000:]
        with web.app_context():
            second = runs.trigger(db.session.get(Connection, quick)).run.id
        wait_for(lambda: _run(second).status == COMPLETED, timeout=60, message="the next run, by the same worker")
        assert worker.proc.poll() is None
        assert "found an unhandled exception" not in worker.output()
    finally:
        if worker:
            worker.kill()
        private.stop()


def test_a_worker_registers_again_when_redis_comes_back_empty_so_a_namesake_can_replace_it_after_a_sigkill(
        app, make_connection, tmp_path):
    from rq import Worker

    quick = make_connection(name="quick", settings={"records": 5}).id
    private = RedisServer().start()
    first = second = None
    try:
        web = make_app(app.config["SQLALCHEMY_DATABASE_URI"], private.url, str(tmp_path))
        with web.app_context():
            from webapp.extensions import redis_ext

            client = redis_ext.client
            key = Worker.redis_worker_namespace_prefix + "host-b.1"
            first = WorkerProcess(web, name="host-b.1").start()
            wait_for(lambda: client.hexists(key, "pid"), timeout=30, message="the worker to register")
            private.stop()
            private.start()  # the same port, nothing kept: the registration is gone
            # The worker's blocking dequeue carries on against the new Redis (redis-py retries it),
            # so its next heartbeat comes after its next job (or RQ's dequeue timeout, minutes).
            between = runs.trigger(db.session.get(Connection, quick)).run.id
            wait_for(lambda: _run(between).status == COMPLETED, timeout=60, message="a run after the restart")
            wait_for(lambda: client.hexists(key, "pid"), timeout=30, message="the worker to register again")
            first.kill(signal.SIGKILL)  # its registration outlives it (RQ's worker TTL)
            second = WorkerProcess(web, name="host-b.1").start()  # what systemd's Restart=always does
            run_id = runs.trigger(db.session.get(Connection, quick)).run.id
        wait_for(lambda: _run(run_id).status == COMPLETED, timeout=60, message="the restarted worker to run it")
        assert second.proc.poll() is None
    finally:
        for worker in (first, second):
            if worker:
                worker.kill()
        private.stop()
