"""Several workers, as if on several machines, sharing one Redis and one database."""
from sqlalchemy import func, select

from tests.conftest import one_backend
from tests.support import wait_for
from webapp import runs
from webapp.extensions import db
from webapp.models import ACTIVE_STATUSES, COMPLETED, Record, Run

pytestmark = one_backend


def test_runs_spread_over_workers_on_different_hosts_and_guarantees_hold(app, make_connection, workers):
    connections = [make_connection(name=f"tenant-{i}", settings={"records": 120, "page_size": 20, "latency_ms": 30})
                   for i in range(8)]
    for host in ("host-a", "host-b", "host-c"):
        workers.start(name=f"{host}.worker")
    run_ids = []
    for conn in connections:
        run_ids.append(runs.trigger(conn, trigger="api").run.id)
        assert not runs.trigger(conn, trigger="api").created  # a second trigger joins the active run

    def all_done():
        db.session.expire_all()
        active_per_connection = db.session.execute(
            select(Run.connection_id, func.count()).where(Run.status.in_(ACTIVE_STATUSES)).group_by(Run.connection_id)).all()
        assert all(count <= 1 for _, count in active_per_connection)  # sampled while they run
        return db.session.scalar(select(func.count()).select_from(Run).where(Run.status == COMPLETED)) == len(run_ids)

    wait_for(all_done, timeout=120, interval=0.2, message="every run to complete")
    hosts = {name.split(".")[0] for name in db.session.scalars(select(Run.worker_name))}
    assert len(hosts) >= 2, hosts  # the load spread over machines
    assert db.session.scalar(select(func.count()).select_from(Run)) == 8
    for conn in connections:
        stored = db.session.scalar(select(func.count()).select_from(Record).where(Record.connection_id == conn.id))
        assert stored == 120
