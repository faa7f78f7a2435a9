"""HaloPSA connector against its simulator over real HTTP: fiscal years, pageinate paging
with concurrent pages, agent envelopes and mappings, Retry-After, token renewal."""
import uuid
from datetime import date

import pytest
from sqlalchemy import select

from tests.simulators.halopsa import HaloAPI
from webapp import runs
from webapp.connectors.base import ReadRequest, Services
from webapp.connectors.errors import AuthError, ConfigError
from webapp.connectors.halopsa import FiscalCalendar, HaloPSAConnector
from webapp.extensions import db
from webapp.models import COMPLETED, Record, Run
from worker.engine import execute_run

FAST = {"HTTP_BACKOFF_BASE_SECONDS": 0.05, "HTTP_BACKOFF_MAX_SECONDS": 0.2, "HTTP_MAX_RETRIES": 3}
CREDENTIALS = {"client_id": "halo-client", "client_secret": "halo-client-secret"}


def settings(server, **extra):
    return {"base_url": server.url, "rate_limit_key": f"halo-test:{uuid.uuid4().hex}", "fiscal_year_start_month": 7,
            **extra}


@pytest.fixture
def halo(serve):
    api = HaloAPI(tickets=450, agents=4, first_date="2023-07-01", days=1096)
    api.server = serve(api)
    return api


def _connector(halo, **extra):
    return HaloPSAConnector(settings(halo.server, **extra), CREDENTIALS, Services(config=FAST, connection_id="t"))


def _tickets(connector, request):
    records, state = [], None
    while True:
        page = connector.read_page(connector.stream("tickets"), request, state)
        records += page.records
        state = page.next_state
        if state is None:
            return records


def test_fiscal_calendar_names_years_by_their_end_unless_told_otherwise():
    july = FiscalCalendar(7, 1)
    assert july.range(2026) == ("2025-07-01", "2026-07-01")
    assert (july.year_of(date(2026, 6, 30)), july.year_of(date(2026, 7, 1))) == (2026, 2027)
    assert FiscalCalendar(7, 1, "start").range(2026) == ("2026-07-01", "2027-07-01")
    assert FiscalCalendar(1, 1).range(2026) == ("2026-01-01", "2027-01-01")
    assert FiscalCalendar(4, 6).year_of(date(2026, 4, 5)) == 2026
    with pytest.raises(ConfigError):
        FiscalCalendar(13, 1)


def test_latest_fiscal_year_is_todays_unless_the_app_created_a_newer_one(halo):
    today = date(2026, 3, 15)  # in FY2026 (July start, named by its end)
    assert _connector(halo, fiscal_years=[2024, 2025]).latest_fiscal_year(today) == 2026
    assert _connector(halo, fiscal_years=[2025, 2026, 2027]).latest_fiscal_year(today) == 2027


def test_tickets_page_with_pageinate_and_later_pages_come_concurrently(halo):
    halo.latency = 1.0
    records = _tickets(_connector(halo, page_concurrency=4), ReadRequest("full"))
    assert sorted(t["id"] for t in records) == sorted(halo.tickets)
    requests = halo.server.log.entries("/api/Tickets")
    assert all(r.args["pageinate"] == "true" and r.args["page_size"] == "100" for r in requests)
    assert sorted(int(r.args["page_no"]) for r in requests) == [1, 2, 3, 4, 5]
    later = [r.time for r in requests if r.args["page_no"] != "1"]
    # Pages 2-5 asked together: one after the other they would arrive at least 3 x 1 s apart
    # (the margin is for a busy machine).
    assert max(later) - min(later) < 2.0


def test_fiscal_year_parameter_lists_only_that_years_tickets(halo):
    request = ReadRequest("range", {"fiscal_year": "2025"})  # the CLI passes text
    records = _tickets(_connector(halo, fiscal_years=[2025]), request)
    assert sorted(t["id"] for t in records) == sorted(halo.between("2024-07-01", "2025-06-30T23:59:59"))
    first = halo.server.log.entries("/api/Tickets")[0].args
    assert (first["datesearch"], first["startdate"], first["enddate"]) == \
        ("dateoccurred", "2024-07-01T00:00:00", "2025-06-30T23:59:59")


@pytest.mark.parametrize("envelope", ["list", "object"])
def test_agents_in_either_envelope_carry_their_mapped_app_user(serve, envelope):
    api = HaloAPI(tickets=30, agents=3, agent_envelope=envelope)
    api.server = serve(api)
    connector = _connector(api, agent_mappings={"1": "alice@app.example", 3: "carol@app.example"})
    agents = connector.read_page(connector.stream("agents"), ReadRequest("full"), None).records
    assert {a["id"]: a["app_user"] for a in agents} == {1: "alice@app.example", 2: None, 3: "carol@app.example"}
    tickets = _tickets(connector, ReadRequest("full"))
    assert all(t["app_user"] == {1: "alice@app.example", 3: "carol@app.example"}.get(t["agent_id"]) for t in tickets)


def test_throttled_requests_wait_out_retry_after_and_go_on(serve):
    api = HaloAPI(tickets=250, agents=2, rate_limit=(2, 1.0))
    api.server = serve(api)
    connector = _connector(api, rate_limit=[1000, 1], page_concurrency=2)  # a client that ignores the limit
    records = _tickets(connector, ReadRequest("full"))
    assert len(records) == 250 and api.violations > 0
    log = api.server.log.entries("/api/Tickets")
    for throttled in (i for i, e in enumerate(log) if e.status == 429):
        retry = next((e for e in log[throttled + 1:] if e.args["page_no"] == log[throttled].args["page_no"]), None)
        assert retry is not None and retry.time - log[throttled].time >= 0.9  # Retry-After: 1


def test_token_expiring_mid_sync_is_renewed_and_a_revoked_client_is_an_auth_error(halo):
    connector = _connector(halo, page_concurrency=1)
    halo.after(2, halo.expire_tokens, path="/api/Tickets")
    assert len(_tickets(connector, ReadRequest("full"))) == 450
    assert halo.token_requests == 2
    halo.revoke()
    with pytest.raises(AuthError):
        _tickets(_connector(halo), ReadRequest("full"))


def test_a_full_run_of_one_fiscal_year_deletes_nothing_of_other_years(app, make_connection, redis, halo):
    conn = make_connection(name="halo", connector="halopsa", settings=settings(halo.server, fiscal_years=[2025]),
                           credentials=CREDENTIALS)

    def sync(**kwargs):
        run = runs.trigger(conn, enqueue=False, streams=["tickets"], **kwargs).run
        assert execute_run(run.id, redis_client=redis, worker_name="t") == COMPLETED
        db.session.expire_all()
        return db.session.get(Run, run.id)

    assert sync().created == 450
    gone = halo.between("2023-07-01", "2024-06-30")[:3]
    halo.delete(gone)
    assert sync(params={"fiscal_year": 2025}).deleted == 0  # the admin's Sync now passes mode full + a year
    assert sync().deleted == 3
    deleted = set(db.session.scalars(select(Record.external_id).where(Record.deleted_at.is_not(None))))
    assert deleted == {str(i) for i in gone}


def test_a_webhook_names_its_ticket_in_any_of_halos_payload_shapes(halo):
    connector = _connector(halo)
    shapes = [{"event": "Ticket Logged", "ticket": {"id": 42, "summary": "x"}}, {"ticket_id": "42"},
              {"object_id": 42, "event": "Ticket Closed"}, {"id": 42}]
    assert [connector.webhook_events(body) for body in shapes] == [[("tickets", "42", False)]] * 4
    assert connector.webhook_events({"event": "Ticket Deleted", "object_id": 42}) == [("tickets", "42", True)]
    for nothing in ({"event": "Client Updated", "client": {"id": 3}}, {"id": "c0ffee-guid"}, {"id": True}, {}):
        assert connector.webhook_events(nothing) == []


def test_webhooks_may_bring_in_tickets_from_the_first_listed_fiscal_year_to_the_latest(halo):
    today = date(2026, 3, 1)  # in FY2026 (July 2025 - June 2026)
    assert _connector(halo).synced_window(today) == ("2025-07-01", "2026-07-01")
    assert _connector(halo, fiscal_years=[2024, 2027]).synced_window(today) == ("2023-07-01", "2027-07-01")
