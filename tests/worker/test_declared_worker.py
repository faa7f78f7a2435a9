"""A declared connector under a real RQ worker that is SIGKILLed mid-sync: the run resumes
from its checkpoint on another worker and stores every record exactly once, as a Python
connector's run does (tests/worker/test_worker_process.py)."""
import os
import signal
from collections import Counter
from datetime import timedelta

from sqlalchemy import select

from tests.conftest import one_backend
from tests.simulators.harness import RecordsAPI, make_records
from tests.support import ROOT, wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, QUEUED, Record, Run, utcnow


def _run(run_id):
    db.session.expire_all()
    return db.session.get(Run, run_id)


@one_backend
def test_sigkilled_worker_resumes_a_declared_connectors_run_with_exact_records(app, make_connection, workers, serve):
    api = RecordsAPI(make_records(600), oauth_clients={"demo": "demo-secret"})
    server = serve(api)
    server.faults.latency = 0.06  # slow enough to be killed mid-way
    app.config["CONNECTORS_DIR"] = os.path.join(ROOT, "docs", "connectors")  # the workers see it too
    conn = make_connection(name="items", connector="items_api", settings={"base_url": server.url, "page_size": 30},
                           credentials={"client_id": "demo", "client_secret": "demo-secret"})
    run_id = runs.trigger(conn).run.id
    doomed = workers.start()
    wait_for(lambda: _run(run_id).processed >= 180, timeout=60, message="the sync to be mid-way")
    doomed.kill(signal.SIGKILL)  # the worker and its work horse die mid-page
    crashed = _run(run_id)
    assert crashed.status == "running" and 0 < crashed.processed < 600
    later = utcnow() + timedelta(seconds=app.config["STALE_AFTER_SECONDS"] + 1)
    assert runs.sweep_stale(now=later) == [(run_id, QUEUED)]
    workers.start()
    done = wait_for(lambda: (r := _run(run_id)).status == COMPLETED and r, timeout=90, message="resume to complete")
    assert done.attempt == 2
    ids = db.session.scalars(select(Record.external_id).where(Record.connection_id == conn.id)).all()
    assert sorted(ids, key=int) == [str(i) for i in range(1, 601)]  # every record, each once
    assert done.created == 600 and done.seen == 600 and done.deleted == 0
    # The resumed attempt asked for the pages after the checkpoint, not from the first page.
    pages = Counter(int(e.args["page"]) for e in server.log.entries("/items"))
    assert set(pages) == set(range(1, 21)) and sum(pages.values()) <= 21
