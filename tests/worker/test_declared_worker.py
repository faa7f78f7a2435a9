"""A declared connector under a real RQ worker that is SIGKILLed mid-sync: the run resumes
from its checkpoint on another worker and stores every record exactly once, as a Python
connector's run does (tests/worker/test_worker_process.py)."""
import os
from collections import Counter

from sqlalchemy import select

from tests.conftest import one_backend
from tests.simulators.harness import RecordsAPI, make_records
from tests.support import ROOT, crash_mid_run_and_resume
from webapp import runs
from webapp.extensions import db
from webapp.models import Record


@one_backend
def test_sigkilled_worker_resumes_a_declared_connectors_run_with_exact_records(app, make_connection, workers, serve):
    api = RecordsAPI(make_records(600), oauth_clients={"demo": "demo-secret"})
    server = serve(api)
    server.faults.latency = 0.06  # slow enough to be killed mid-way
    app.config["CONNECTORS_DIR"] = os.path.join(ROOT, "docs", "connectors")  # the workers see it too
    conn = make_connection(name="items", connector="items_api", settings={"base_url": server.url, "page_size": 30},
                           credentials={"client_id": "demo", "client_secret": "demo-secret"})
    run_id = runs.trigger(conn).run.id
    done = crash_mid_run_and_resume(app, workers, run_id, after=180, total=600)
    assert done.attempt == 2
    ids = db.session.scalars(select(Record.external_id).where(Record.connection_id == conn.id)).all()
    assert sorted(ids, key=int) == [str(i) for i in range(1, 601)]  # every record, each once
    assert done.created == 600 and done.seen == 600 and done.deleted == 0
    # The resumed attempt asked for the pages after the checkpoint, not from the first page.
    pages = Counter(int(e.args["page"]) for e in server.log.entries("/items"))
    assert set(pages) == set(range(1, 21)) and sum(pages.values()) <= 21
