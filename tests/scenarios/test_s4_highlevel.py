"""S4: HighLevel orders -> tickets, through real RQ workers: a signed webhook sent by the
simulator to the hub over HTTP syncs one order and its tickets; a manual full sync makes
ticket counts match quantities exactly; changed quantities resync to the new set."""
from collections import Counter

from rq import Worker

from tests.scenarios.conftest import dispatched, finished, one_backend, records
from tests.simulators.highlevel import HighLevelAPI
from tests.support import wait_for
from webapp import runs
from webapp.extensions import redis_ext
from webapp.models import COMPLETED


def _ticket_ids(expected):
    return {f"{o}:{p}:{n}" for o, quantities in expected.items() for p, q in quantities.items() for n in range(1, q + 1)}


def _connection(make_connection, api, name="ghl-s4", **settings):
    # A manual schedule that takes webhooks: S4's wiring says so in its trigger policy.
    return make_connection(name=name, connector="highlevel", credentials={"token": "pit-sim-token"},
                           settings={"base_url": api.server.url, "location_id": api.location_id,
                                     "webhook_public_key": api.public_key_pem,
                                     "allowed_triggers": ["manual", "webhook", "api"], **settings})


def _assert_tickets_match_quantities(conn, api):
    expected = api.expected_tickets()
    orders, tickets = records(conn.id, "orders"), records(conn.id, "tickets")
    assert set(orders) == set(expected)
    for order_id, order in orders.items():
        assert order.data == api.orders[order_id]  # the stored order is the provider's, field by field
    assert set(tickets) == _ticket_ids(expected)
    per_type = Counter((t.data["order_id"], t.data["product_id"]) for t in tickets.values())
    assert per_type == Counter({(o, p): q for o, qs in expected.items() for p, q in qs.items()})
    return expected


@one_backend
def test_webhook_order_sync_then_manual_full_sync_then_changed_quantities(app, make_connection, workers, serve):
    api = HighLevelAPI(orders=30, products=4, invalid_every=6, seed=41)
    api.server = serve(api)
    hub = serve(app)
    conn = _connection(make_connection, api)
    url = f"{hub.url}/webhooks/{conn.name}"
    workers.start()

    expected = api.expected_tickets()
    first = next(iter(expected))
    answer = api.send_webhook(url, "OrderCreate", first)
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    synced = finished(dispatched(answer.json())[0])
    assert synced.status == COMPLETED and (synced.trigger, synced.mode) == ("webhook", "record")
    assert set(records(conn.id, "orders")) == {first}
    assert set(records(conn.id, "tickets")) == _ticket_ids({first: expected[first]})

    full = finished(runs.trigger(conn, trigger="manual").run.id)
    assert full.status == COMPLETED and full.deleted == 0
    expected = _assert_tickets_match_quantities(conn, api)
    assert len(expected) == 25  # every 6th of 30 orders has only an inactive product: not synced

    others = [o for o in expected if o != first]
    lowered = next(o for o in others if sum(expected[o].values()) > 1)  # it has surplus to lose
    raised, emptied, untouched = [o for o in others if o != lowered][:3]
    api.set_quantities(lowered, {next(iter(expected[lowered])): 1})
    api.set_quantities(raised, {p: q + 3 for p, q in expected[raised].items()})
    inactive = next(p for p in api.products if p not in api.active_product_ids())
    api.set_quantities(emptied, {inactive: 2})
    before = records(conn.id, "tickets")

    answer = api.send_webhook(url, "OrderStatusUpdate", lowered)
    assert finished(dispatched(answer.json())[0]).status == COMPLETED
    now = records(conn.id, "tickets")
    assert {k for k in now if k.startswith(lowered)} == _ticket_ids({lowered: api.expected_tickets()[lowered]})
    assert {k for k in now if not k.startswith(lowered)} == {k for k in before if not k.startswith(lowered)}

    again = finished(runs.trigger(conn, trigger="manual").run.id)
    assert again.status == COMPLETED
    _assert_tickets_match_quantities(conn, api)
    assert emptied not in records(conn.id, "orders")
    gone = records(conn.id, "tickets", deleted=True)
    assert {k.split(":")[0] for k in gone} == {lowered, emptied}
    assert records(conn.id, "tickets")[f"{untouched}:{next(iter(expected[untouched]))}:1"].last_run_id == full.id
    assert api.violations == 0


@one_backend
def test_two_workers_syncing_two_connections_of_one_location_share_its_rate_limit(app, make_connection, workers,
                                                                                  serve):
    # Enough orders that each sync needs the budget several times over, so the two overlap.
    api = HighLevelAPI(orders=40, products=3, rate_limit=(20, 2.0), seed=42)
    api.latency = 0.02
    api.server = serve(api)
    # No rate_limit_key: both connections default to the location's, so they share one budget.
    # The window is wider than the provider's for a test's short window on a busy machine.
    conns = [_connection(make_connection, api, name=f"ghl-{n}", rate_limit=[20, 2.4]) for n in (1, 2)]
    workers.start()
    workers.start()
    # Both workers listening before the runs are queued, or one may do both runs in turn.
    wait_for(lambda: len(Worker.all(connection=redis_ext.client)) == 2, timeout=60, message="two workers")
    first, second = [finished(run_id, timeout=90) for run_id in
                     [runs.trigger(c, trigger="manual").run.id for c in conns]]
    assert first.status == second.status == COMPLETED
    assert first.worker_name != second.worker_name
    assert first.started_at < second.finished_at and second.started_at < first.finished_at  # at once
    for conn in conns:
        _assert_tickets_match_quantities(conn, api)
    assert api.violations == 0
    assert api.window.busiest == 20  # the shared budget was the bottleneck, and it held
