"""Seed scenarios end to end: provider simulators over real HTTP, real RQ worker
processes, the hub itself served over HTTP where a provider has to reach it (webhooks)."""
import pytest

from tests.conftest import BACKENDS
from tests.support import wait_for
from webapp.extensions import db
from webapp.models import TERMINAL_STATUSES, Record, Run, WebhookDelivery

# Scenarios with worker processes run on one backend, PostgreSQL when the run has it: what
# they add is the processes and the wiring; tests/connectors run the same syncs in-process
# on both databases.
one_backend = pytest.mark.parametrize("app", BACKENDS[-1:], indirect=True)




def finished(run_id, timeout=60):
    """Wait for a run to end (any terminal status) and return it, fresh from the database."""
    def done():
        db.session.commit()  # end any snapshot: see what the worker committed
        run = db.session.get(Run, run_id)
        db.session.refresh(run)
        return run if run.status in TERMINAL_STATUSES else None

    return wait_for(done, timeout=timeout, interval=0.1, message=f"run {run_id} to finish")


def dispatched(answer, timeout=30):
    """The run ids a webhook delivery caused, once the dispatcher (a worker) gave it them."""
    def done():
        db.session.commit()
        delivery = db.session.get(WebhookDelivery, answer["delivery_id"])
        db.session.refresh(delivery)
        return delivery.run_ids if delivery.outcome != "received" else None

    return wait_for(done, timeout=timeout, interval=0.05, message=f"delivery {answer['delivery_id']} dispatched")


def records(connection_id, stream, deleted=False):
    """{external_id: Record} of a stream, live ones (or soft-deleted ones with deleted=True)."""
    db.session.commit()
    query = db.select(Record).where(Record.connection_id == connection_id, Record.stream == stream)
    query = query.where(Record.deleted_at.is_not(None) if deleted else Record.deleted_at.is_(None))
    return {r.external_id: r for r in db.session.scalars(query)}
