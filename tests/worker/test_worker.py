"""The worker's own steps meeting a Redis outage, in this process, against a real redis-server
that is really stopped. RQ's work loop ends the worker on an error outside its blocking
dequeue; these steps must wait for Redis instead (worker/worker.py)."""
import logging
import subprocess
import sys
import threading

import pytest

from tests.conftest import make_app
from tests.support import ROOT, RedisServer, wait_for
from worker.worker import SynchubWorker

STEPS = {
    "registry cleaning": ("clean RQ's registries in Redis", lambda worker: worker.run_maintenance_tasks()),
    "suspension check": ("check in Redis whether workers are suspended",
                         lambda worker: worker.check_for_suspension(False)),
    "heartbeat after a job": ("send its heartbeat to Redis", lambda worker: worker.heartbeat()),
}


def _in_thread(call):
    """`call()` in a thread; the thread and what it returned or raised."""
    outcome = {}

    def target():
        try:
            outcome["returned"] = call()
        except Exception as exc:  # noqa: BLE001  what RQ would have ended the worker on
            outcome["raised"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("step", list(STEPS))
def test_a_worker_step_waits_through_a_redis_outage_instead_of_ending_the_worker(app, tmp_path, caplog, step):
    said, call = STEPS[step]
    private = RedisServer().start()
    try:
        web = make_app(app.config["SQLALCHEMY_DATABASE_URI"], private.url, str(tmp_path))
        worker = SynchubWorker(web, name="outage.1")
        worker.register_birth()
        private.stop()
        caplog.set_level(logging.WARNING, logger="worker.worker")
        thread, outcome = _in_thread(lambda: call(worker))
        wait_for(lambda: f"could not {said}" in caplog.text or "raised" in outcome, timeout=30,
                 message="the step to meet the outage")
        assert "raised" not in outcome, outcome.get("raised")
        assert thread.is_alive()  # waiting for Redis, not gone on without it
        private.start()  # the same port
        thread.join(timeout=60)
        assert not thread.is_alive() and "raised" not in outcome
        call(worker)  # and the step works again with Redis back
        assert "Connection refused" in caplog.text
    finally:
        private.stop()


def test_a_worker_started_while_redis_is_down_waits_for_it_then_registers(app, tmp_path, caplog):
    from rq import Worker

    caplog.set_level(logging.WARNING, logger="worker.worker")
    private = RedisServer()  # not started yet
    web = make_app(app.config["SQLALCHEMY_DATABASE_URI"], private.url, str(tmp_path))
    try:
        made, outcome = _in_thread(lambda: SynchubWorker(web, name="early.1"))
        wait_for(lambda: "Worker early.1 could not reach Redis" in caplog.text or outcome, timeout=30,
                 message="the worker to meet the outage as it is made")
        assert not outcome and made.is_alive()
        private.start()
        made.join(timeout=60)
        worker = outcome["returned"]

        # Redis goes away again as the worker registers (RQ's bootstrap): it starts once Redis is back.
        private.stop()
        started, outcome = _in_thread(worker.bootstrap)
        wait_for(lambda: "Worker early.1 could not register in Redis" in caplog.text or outcome, timeout=30,
                 message="the start to meet the outage")
        assert not outcome and started.is_alive()
        private.start()
        started.join(timeout=60)
        assert not started.is_alive() and "raised" not in outcome
        with web.app_context():
            from webapp import queue

            assert [found.name for found in queue.workers()] == ["early.1"]
        assert Worker.find_by_key(worker.key, connection=worker.connection).pid is not None
        worker.teardown()
    finally:
        private.stop()


PREPARED = """
import gc, sys
from tests.conftest import make_app
from worker.worker import prepare

app = make_app(sys.argv[1], sys.argv[2], sys.argv[3])
prepare(app)
frozen = gc.get_freeze_count()
cycle = []
cycle.append(cycle)  # garbage made after preparing, as a job's would be
del cycle
print(frozen, gc.collect())
"""


def test_a_prepared_worker_keeps_what_it_loaded_out_of_the_collectors_passes_and_still_collects_a_jobs_garbage(
        app, redis_url, tmp_path):
    # In a process of its own: a frozen heap stays frozen for the rest of the process.
    out = subprocess.run([sys.executable, "-c", PREPARED, app.config["SQLALCHEMY_DATABASE_URI"], redis_url,
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    frozen, collected = map(int, out.stdout.split()[-2:])
    assert frozen > 100_000  # modules, connectors, mappers, the rehearsal's compiled statements
    assert collected >= 1
