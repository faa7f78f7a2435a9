"""S5: HaloPSA tickets and agents, through a real RQ worker: the supervisor's hourly slot
syncs the latest fiscal year (with the access token expiring mid-sync), the app's
`fiscal_year.created` event (POST /api/events) syncs the new year and makes it the latest,
and agent mappings from the connection's settings are applied to every synced ticket.
Halo's ticket webhooks (Basic auth) sent over HTTP to the hub sync one ticket each."""
import threading
from datetime import date, datetime, timedelta

from scheduler.supervisor import Supervisor
from tests.scenarios.conftest import dispatched, finished, one_backend, records
from tests.simulators.halopsa import HaloAPI
from webapp.api.auth import create_token
from webapp.connectors.halopsa import FiscalCalendar
from webapp.extensions import db
from webapp.models import COMPLETED, Connection, Run, RunEvent, WebhookDelivery, utcnow

MAPPINGS = {"1": "alice@app.example", "2": "bob@app.example"}


def _assert_tickets(conn, api, ids):
    stored = records(conn.id, "tickets")
    assert set(stored) == {str(i) for i in ids}
    for key, record in stored.items():  # the provider's ticket plus the mapped app user
        ticket = api.tickets[int(key)]
        assert record.data == dict(ticket, app_user=MAPPINGS.get(str(ticket["agent_id"])))
    return stored


def _hourly_run(supervisor, conn):
    """Fire the connection's next hourly slot the way the running supervisor would."""
    db.session.commit()
    connection = db.session.get(Connection, conn.id)
    db.session.refresh(connection)
    slot = connection.next_run_at
    assert slot is not None and slot.minute == 0
    outcomes = supervisor.tick(slot)
    assert [o.action for o in outcomes] == ["enqueued"]
    return outcomes[0].run_id


def _halo_until_today(serve, years_back, tickets):
    """(calendar, current fiscal year, a served HaloAPI with tickets from the start of the
    fiscal year `years_back` before the current one until today)."""
    calendar = FiscalCalendar(7, 1)
    current = calendar.year_of(date.today())
    first_day = date.fromisoformat(calendar.range(current - years_back)[0])
    api = HaloAPI(tickets=tickets, agents=3, first_date=first_day.isoformat(), days=(date.today() - first_day).days)
    api.server = serve(api)
    return calendar, current, api


@one_backend
def test_hourly_sync_of_the_latest_fiscal_year_and_an_event_for_a_new_one(app, make_connection, workers, serve):
    calendar, current, api = _halo_until_today(serve, years_back=2, tickets=240)
    conn = make_connection(name="halo-s5", connector="halopsa", schedule="hourly:0", credentials={
        "client_id": "halo-client", "client_secret": "halo-client-secret"}, settings={
        "base_url": api.server.url, "fiscal_year_start_month": 7, "fiscal_years": [current - 2, current - 1, current],
        "schedule_mode": "incremental", "agent_mappings": MAPPINGS, "page_size": 10,
        "event_triggers": {"fiscal_year.created": {"mode": "range", "params": {"fiscal_year": "{data.fiscal_year}"},
                                                   "streams": ["tickets"]}}})
    workers.start()
    supervisor = Supervisor(app, name="s5-supervisor")
    supervisor.tick(utcnow())  # plans the next slot: the top of the next hour

    api.after(2, api.expire_tokens, path="/api/Tickets")  # the token dies mid-sync
    hourly = finished(_hourly_run(supervisor, conn))
    assert hourly.status == COMPLETED and (hourly.trigger, hourly.mode) == ("schedule", "incremental")
    start, end = calendar.range(current)
    last_day = (date.fromisoformat(end) - timedelta(days=1)).isoformat()
    _assert_tickets(conn, api, api.between(start, last_day))
    assert 0 < len(records(conn.id, "tickets")) < len(api.tickets)  # only the latest year
    # Renewed, not failed (pages fetched at once may each renew on their 401: harmless here).
    assert api.token_requests >= 2 and hourly.attempt == 1
    assert [e.status for e in api.server.log.entries("/api/Tickets")].count(401) >= 1
    agents = records(conn.id, "agents")
    assert {k: r.data["app_user"] for k, r in agents.items()} == {"1": MAPPINGS["1"], "2": MAPPINGS["2"], "3": None}

    # The app creates the next fiscal year and says so; its tickets already exist in Halo.
    new_year = current + 1
    new_start = date.fromisoformat(calendar.range(new_year)[0])
    created = api.add_tickets(15, start=datetime.combine(new_start, datetime.min.time()), step=timedelta(days=3))
    token = create_token("s5-app")
    answer = app.test_client().post("/api/events", json={"type": "fiscal_year.created", "data": {"fiscal_year": new_year}},
                                    headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 202 and len(answer.json["runs"]) == 1
    event_run = finished(answer.json["runs"][0]["run_id"])
    assert event_run.status == COMPLETED and (event_run.trigger, event_run.params) == ("event", {"fiscal_year": new_year})
    stored = records(conn.id, "tickets")
    assert {str(i) for i in created} <= set(stored)
    db.session.refresh(db.session.get(Connection, conn.id))
    assert new_year in db.session.get(Connection, conn.id).settings["fiscal_years"]

    # The next hourly slot now syncs the new year: it is the latest.
    api.server.log.clear()
    next_hourly = finished(_hourly_run(supervisor, conn))
    assert next_hourly.status == COMPLETED and next_hourly.unchanged == len(created) + len(agents)
    asked = api.server.log.entries("/api/Tickets")[0].args
    assert asked["startdate"] == f"{new_start}T00:00:00"
    _assert_tickets(conn, api, set(api.between(start, last_day)) | set(created))
    assert db.session.query(Run).filter(Run.trigger == "schedule").count() == 2
    assert api.violations == 0


@one_backend
def test_an_event_for_a_new_fiscal_year_during_the_hourly_sync_waits_and_then_syncs_exactly_that_year(
        app, make_connection, workers, serve):
    calendar = FiscalCalendar(7, 1)
    current = calendar.year_of(date.today())
    first_day = date.fromisoformat(calendar.range(current - 1)[0])
    api = HaloAPI(tickets=120, agents=2, first_date=first_day.isoformat(), days=(date.today() - first_day).days)
    api.server = serve(api)
    conn = make_connection(name="halo-s5-busy", connector="halopsa", schedule="hourly:0", credentials={
        "client_id": "halo-client", "client_secret": "halo-client-secret"}, settings={
        "base_url": api.server.url, "fiscal_year_start_month": 7, "fiscal_years": [current - 1, current],
        "schedule_mode": "incremental", "page_size": 10,
        "event_triggers": {"fiscal_year.created": {"mode": "range", "params": {"fiscal_year": "{data.fiscal_year}"},
                                                   "streams": ["tickets"]}}})
    # The hourly sync's first page of tickets is held until the events have been sent.
    held, release = threading.Event(), threading.Event()
    api.after(1, lambda: (held.set(), release.wait(60)), path="/api/Tickets")
    workers.start()
    supervisor = Supervisor(app, name="s5-busy-supervisor")
    supervisor.tick(utcnow())
    hourly_id = _hourly_run(supervisor, conn)
    assert held.wait(60), "the hourly sync never asked for tickets"

    new_year = current + 1
    new_start = date.fromisoformat(calendar.range(new_year)[0])
    created = api.add_tickets(12, start=datetime.combine(new_start, datetime.min.time()), step=timedelta(days=3))
    token = create_token("s5-busy-app")
    client = app.test_client()
    answers = [client.post("/api/events", json={"type": "fiscal_year.created", "data": {"fiscal_year": new_year}},
                           headers={"Authorization": f"Bearer {token}"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    first, *repeats = [a.json["runs"][0] for a in answers]
    assert (first["outcome"], first["status"], first["active_run_id"]) == ("follow_up", "waiting", hourly_id)
    assert first["waiting_reason"] == f"waiting for run {hourly_id} of this connection to end"
    assert [(r["outcome"], r["run_id"]) for r in repeats] == [("coalesced", first["run_id"])] * 2
    assert db.session.get(Run, first["run_id"]).status == "waiting"

    release.set()
    hourly = finished(hourly_id)
    follow_up = finished(first["run_id"])
    assert hourly.status == COMPLETED and follow_up.status == COMPLETED
    assert follow_up.started_at >= hourly.finished_at  # after the active one, never beside it
    assert (follow_up.trigger, follow_up.params, follow_up.streams) == ("event", {"fiscal_year": new_year}, ["tickets"])
    # Exactly the new year's tickets: every ticket request of the follow-up asked for that year only.
    assert follow_up.seen == follow_up.created == len(created)
    new_start_arg = f"{new_start}T00:00:00"
    asked = [e.args for e in api.server.log.entries("/api/Tickets")]
    assert sum(1 for a in asked if a.get("startdate") == new_start_arg) >= 2  # at least two pages of 10
    assert {str(i) for i in created} <= set(records(conn.id, "tickets"))
    assert db.session.query(Run).filter(Run.connection_id == conn.id).count() == 2


@one_backend
def test_ticket_webhooks_sync_one_ticket_within_the_synced_fiscal_years(app, make_connection, workers, serve):
    calendar, current, api = _halo_until_today(serve, years_back=1, tickets=40)
    hub = serve(app)
    conn = make_connection(name="halo-hooks", connector="halopsa", schedule="hourly:0", credentials={
        "client_id": "halo-client", "client_secret": "halo-client-secret",
        "webhook_username": api.webhook_username, "webhook_password": api.webhook_password}, settings={
        "base_url": api.server.url, "fiscal_year_start_month": 7, "fiscal_years": [current],
        "agent_mappings": MAPPINGS})
    url = f"{hub.url}/webhooks/{conn.name}"
    start, end = calendar.range(current)
    this_year = api.between(start, (date.fromisoformat(end) - timedelta(days=1)).isoformat())
    last_year = [t for t in api.tickets if t not in this_year]
    assert this_year and last_year
    workers.start()

    # Wrong credentials: 401, and nothing is stored or started.
    refused = api.send_webhook(url, "Ticket Logged", this_year[0], password="not-the-password")
    assert refused.status_code == 401 and refused.json()["error"] == "bad_signature"
    db.session.commit()
    assert db.session.query(WebhookDelivery).count() == 0 and db.session.query(Run).count() == 0

    # The right ones: one delivery, one record run fetching the ticket, the ticket stored.
    body = api.webhook_body("Ticket Logged", this_year[0])
    answer = api.send_webhook(url, "Ticket Logged", this_year[0], body=body)
    assert answer.status_code == 200 and answer.json()["status"] == "accepted"
    run_ids = dispatched(answer.json())
    assert len(run_ids) == 1
    run = finished(run_ids[0])
    assert run.status == COMPLETED and (run.trigger, run.mode, run.record_key) == (
        "webhook", "record", f"tickets:{this_year[0]}")
    _assert_tickets(conn, api, [this_year[0]])
    assert [e.status for e in api.server.log.entries(f"/api/Tickets/{this_year[0]}")] == [200]

    # Halo sends it again (a retry resends the same bytes): counted once, nothing new.
    again = api.send_webhook(url, "Ticket Logged", this_year[0], body=body)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["delivery_id"] == answer.json()["delivery_id"]
    db.session.commit()
    assert db.session.query(WebhookDelivery).count() == 1 and db.session.query(Run).count() == 1

    # Closed at Halo: the update is stored.
    api.tickets[this_year[0]].update(status_id=9, status_name="Closed", dateclosed="2026-01-02T10:00:00")
    closed = finished(dispatched(api.send_webhook(url, "Ticket Closed", this_year[0]).json())[0])
    assert closed.status == COMPLETED and closed.updated == 1
    assert records(conn.id, "tickets")[str(this_year[0])].data["status_name"] == "Closed"

    # A ticket of a fiscal year this connection does not sync is fetched and left out, saying why.
    outside = finished(dispatched(api.send_webhook(url, "Ticket Updated", last_year[0]).json())[0])
    assert outside.status == COMPLETED and (outside.created, outside.failed) == (0, 1)
    skipped = db.session.scalars(db.select(RunEvent).where(RunEvent.run_id == outside.id,
                                                           RunEvent.kind == "record_error")).one()
    assert "outside the fiscal years this connection syncs" in skipped.message
    assert set(records(conn.id, "tickets")) == {str(this_year[0])}

    # Deleted at Halo: the next event finds it gone, and our copy is soft-deleted.
    api.delete([this_year[0]])
    gone = finished(dispatched(api.send_webhook(url, "Ticket Updated", this_year[0]).json())[0])
    assert gone.status == COMPLETED and gone.deleted == 1
    assert set(records(conn.id, "tickets", deleted=True)) == {str(this_year[0])}
    assert api.violations == 0
