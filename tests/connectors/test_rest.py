"""The generic REST connector (and the pagination strategies) against the records simulator."""
import json
import time
import uuid

import pytest

from tests.simulators.harness import RecordsAPI, make_records
from webapp.connectors import pagination
from webapp.connectors.base import ReadRequest, Services
from webapp.connectors.errors import AuthError, ConfigError
from webapp.connectors.rest import RestConnector

FAST = {"HTTP_BACKOFF_BASE_SECONDS": 0.001, "HTTP_BACKOFF_MAX_SECONDS": 0.01, "HTTP_TIMEOUT_SECONDS": 5}


def connector(server, stream=None, credentials=None, **settings):
    stream = {"path": "/items", "records_key": "items", **(stream or {})}
    settings = {"base_url": server.url, "streams": {"items": stream}, **settings}
    # A fresh connection id per connector: in-process limiters are shared per key.
    return RestConnector(settings, credentials or {}, Services(config=FAST, connection_id=uuid.uuid4().hex))


def read_all(conn, request=None, limit=10_000):
    """What the engine does: follow next_state until None. Returns records, bad, pages."""
    stream = conn.stream("items")
    request = request or ReadRequest(mode="full")
    records, bad, pages, state = [], [], [], None
    for _ in range(limit):
        page = conn.read_page(stream, request, state)
        json.dumps(page.next_state)  # checkpoints must be JSON
        records += page.records
        bad += page.bad_records
        pages.append(page)
        if page.next_state is None:
            return records, bad, pages
        state = page.next_state
    raise AssertionError("pagination did not finish")


PAGINATIONS = {
    "page": {"type": "page", "page_size": 7, "total_key": "total"},
    "page-without-total": {"type": "page", "page_size": 7},
    "offset": {"type": "offset", "page_size": 7},
    "token": {"type": "token", "token_param": "page_token", "token_key": "next_page_token", "page_size": 7},
    "cursor-from-record": {"type": "cursor", "cursor_param": "after", "record_field": "id",
                           "has_more_key": "has_more", "page_size": 7},
}


@pytest.mark.parametrize("style", PAGINATIONS)
@pytest.mark.parametrize("count", [50, 49])  # 49 = 7 full pages: the end must still be found
def test_reads_every_record_once_in_each_pagination_style(serve, style, count):
    server = serve(RecordsAPI(make_records(count)))
    conn = connector(server, {"pagination": PAGINATIONS[style]})

    records, bad, pages = read_all(conn)

    assert [r["id"] for r in records] == list(range(1, count + 1))
    assert bad == []
    assert len(pages) <= count // 7 + 1
    assert len(server.log) == len(pages)
    if PAGINATIONS[style].get("total_key"):
        assert {p.total for p in pages} == {count}


def test_resuming_from_a_checkpoint_continues_where_it_stopped(serve):
    server = serve(RecordsAPI(make_records(30)))
    conn = connector(server, {"pagination": {"type": "token", "token_param": "page_token", "page_size": 10}})
    stream = conn.stream("items")
    first = conn.read_page(stream, ReadRequest(mode="full"), None)

    # A new connector instance (a new worker after a crash) resumes from the stored state.
    again = connector(server, {"pagination": {"type": "token", "token_param": "page_token", "page_size": 10}})
    second = again.read_page(stream, ReadRequest(mode="full"), json.loads(json.dumps(first.next_state)))

    assert [r["id"] for r in second.records] == list(range(11, 21))


def test_incremental_asks_from_the_cursor_inclusively(serve):
    records = make_records(10)
    records[4]["updated_at"] = records[5]["updated_at"]  # two records share the boundary value
    server = serve(RecordsAPI(records))
    conn = connector(server, {"cursor_field": "updated_at", "cursor_param": "updated_since",
                              "pagination": {"type": "page", "page_size": 3}})
    boundary = records[5]["updated_at"]

    got, _, _ = read_all(conn, ReadRequest(mode="incremental", cursor=boundary))

    assert [r["id"] for r in got] == [5, 6, 7, 8, 9, 10]
    assert all(e.args["updated_since"] == boundary for e in server.log.entries())


def test_incremental_without_a_cursor_reads_everything(serve):
    server = serve(RecordsAPI(make_records(5)))
    conn = connector(server, {"cursor_field": "updated_at", "cursor_param": "updated_since"})

    got, _, _ = read_all(conn, ReadRequest(mode="incremental", cursor=None))

    assert len(got) == 5
    assert "updated_since" not in server.log.entries()[0].args


def test_range_mode_sends_since_and_until(serve):
    records = make_records(10)
    server = serve(RecordsAPI(records))
    conn = connector(server, {"since_param": "since", "until_param": "until",
                              "pagination": {"type": "offset", "page_size": 4}})
    params = {"since": records[2]["updated_at"], "until": records[7]["updated_at"]}

    got, _, _ = read_all(conn, ReadRequest(mode="range", params=params))

    assert [r["id"] for r in got] == [3, 4, 5, 6, 7]


def test_range_mode_without_a_since_param_is_a_config_error(serve):
    server = serve(RecordsAPI(make_records(3)))
    conn = connector(server)
    with pytest.raises(ConfigError, match="since_param"):
        conn.read_page(conn.stream("items"), ReadRequest(mode="range", params={"since": "2024-01-01"}), None)
    assert len(server.log) == 0


def test_malformed_records_are_passed_to_the_engine_as_they_came(serve):
    # Setting aside records without a usable key is the engine's work, for every connector
    # (tests/worker/test_engine_http.py): the connector does not check them a second time.
    api = RecordsAPI(make_records(4))
    api.add_malformed(["not", "an", "object"])
    server = serve(api)
    conn = connector(server, {"pagination": {"type": "page", "page_size": 3}})

    records, bad, _ = read_all(conn)

    assert [r["id"] for r in records if isinstance(r, dict)] == [1, 2, 3, 4]
    assert ["not", "an", "object"] in records and bad == []


def test_record_mode_fetches_one_record(serve):
    server = serve(RecordsAPI(make_records(5)))
    conn = connector(server, {"record_path": "/items/{id}"})

    page = conn.read_page(conn.stream("items"), ReadRequest(mode="record", params={"record_id": 3}), None)

    assert [r["id"] for r in page.records] == [3] and page.next_state is None
    assert server.log.entries()[0].path == "/items/3"


def test_bare_list_bodies_and_single_page(serve):
    server = serve(RecordsAPI())
    server.faults.status(200, body=[{"id": "a"}, {"id": "b"}])
    conn = connector(server, {"records_key": None, "pagination": {"type": "none"}})

    records, _, pages = read_all(conn)

    assert [r["id"] for r in records] == ["a", "b"] and len(pages) == 1


def test_a_missing_envelope_is_a_config_error_not_an_empty_stream(serve):
    server = serve(RecordsAPI(make_records(3)))
    conn = connector(server, {"records_key": "data"})
    with pytest.raises(ConfigError, match="no records at 'data'"):
        read_all(conn)


# -- auth and limits from settings ----------------------------------------------------------


def test_bearer_token_credentials(serve):
    server = serve(RecordsAPI(make_records(3), auth_token="t0ken-abc"))
    assert len(read_all(connector(server, credentials={"token": "t0ken-abc"}))[0]) == 3
    with pytest.raises(AuthError):
        read_all(connector(server, credentials={"token": "wrong"}))


def test_api_key_credentials_use_the_named_header(serve):
    server = serve(RecordsAPI(make_records(3)))
    read_all(connector(server, credentials={"api_key": "k-123", "header": "X-Custom-Key"}))
    assert server.log.entries()[0].headers["X-Custom-Key"] == "k-123"


def test_oauth2_client_credentials(serve):
    server = serve(RecordsAPI(make_records(12), oauth_clients={"cid": "sec"}))
    conn = connector(server, {"pagination": {"type": "page", "page_size": 5}},
                     credentials={"client_id": "cid", "client_secret": "sec"},
                     token_url=f"{server.url}/oauth/token", token_form={"scope": "all"})

    records, _, pages = read_all(conn)

    assert len(records) == 12 and len(pages) == 3
    assert server.app.token_requests == 1


def test_rate_limit_setting_keeps_the_provider_happy(serve):
    # The provider's window is half ours: our 4-per-0.4 s counts from our clock, its from when each
    # request reaches it, and a request held up on a loaded machine lands later than it left.
    # A 50 ms margin (0.35 s) was overrun once in CI; 200 ms takes a far longer delay.
    server = serve(RecordsAPI(make_records(24), rate_limit=(4, 0.2)))
    conn = connector(server, {"pagination": {"type": "offset", "page_size": 2}}, rate_limit=[4, 0.4])

    started = time.monotonic()
    records, _, _ = read_all(conn)

    assert len(records) == 24
    assert server.app.violations == 0
    assert time.monotonic() - started >= 0.8  # 13 requests at 4 per 0.4 s


@pytest.mark.parametrize("settings", [
    {"streams": {"items": {"path": "/items"}}},  # no base_url
    {"base_url": "ftp://x", "streams": {"items": {"path": "/items"}}},
    {"base_url": "http://x", "streams": {}},
    {"base_url": "http://x", "streams": {"items": {}}},
    {"base_url": "http://x", "streams": {"items": {"path": "/i", "paging": {}}}},
    {"base_url": "http://x", "streams": {"items": {"path": "/i", "pagination": {"type": "pages"}}}},
    {"base_url": "http://x", "streams": {"items": {"path": "/i", "pagination": {"type": "page", "size": 3}}}},
])
def test_bad_settings_are_config_errors(settings):
    with pytest.raises(ConfigError):
        RestConnector(settings, {}, Services(config=FAST))


def test_streams_come_from_settings(serve):
    server = serve(RecordsAPI())
    conn = connector(server, {"primary_key": "uuid", "cursor_field": "updated_at"})
    assert conn.default_streams() == ["items"]
    assert conn.stream("items").primary_key == "uuid"
    with pytest.raises(ConfigError, match="no stream 'orders'"):
        conn.stream("orders")


def test_reads_100k_records_in_pages_of_1000_quickly(serve):
    server = serve(RecordsAPI(make_records(100_000), page_size_max=1000))
    conn = connector(server, {"pagination": {"type": "page", "page_size": 1000, "total_key": "total"}})

    started = time.monotonic()
    records, _, pages = read_all(conn)
    elapsed = time.monotonic() - started

    assert len(records) == 100_000 and len(pages) == 100
    assert records[-1]["id"] == 100_000
    assert elapsed < 10, f"{elapsed:.1f}s for 100 pages"


# -- pagination strategies on their own -----------------------------------------------------------


def test_dig_follows_dotted_paths_and_list_indexes():
    body = {"data": {"items": [1]}, "total": [{"total": 9}]}  # HighLevel puts totals in a list
    assert pagination.dig(body, "data.items") == [1]
    assert pagination.dig(body, "total.0.total") == 9
    assert pagination.dig([1, 2], None) == [1, 2]
    with pytest.raises(KeyError):
        pagination.dig(body, "data.missing")


def test_page_number_stops_when_total_is_reached_even_on_a_full_page():
    strategy = pagination.PageNumber(page_size=2, records_key="items", total_key="meta.total",
                                     extra={"pageinate": "true"})
    assert strategy.params(None) == {"pageinate": "true", "page": 1, "page_size": 2}
    records, state, total = strategy.parse({"items": [1, 2], "meta": {"total": 4}}, {"page": 2})
    assert (records, state, total) == ([1, 2], None, 4)
    assert strategy.parse({"items": [1, 2], "meta": {"total": 5}}, {"page": 2})[1] == {"page": 3}


def test_page_number_with_zero_based_pages():
    strategy = pagination.PageNumber(page_param="page_no", page_size=2, first_page=0, records_key="r",
                                     total_key="n")
    assert strategy.params(None)["page_no"] == 0
    assert strategy.parse({"r": [1, 2], "n": 4}, None)[1] == {"page": 1}
    assert strategy.parse({"r": [3, 4], "n": 4}, {"page": 1})[1] is None


def test_next_token_empty_string_means_finished_and_a_stuck_token_is_an_error():
    strategy = pagination.NextToken(records_key="webinars", total_key="total_records")
    assert strategy.parse({"webinars": [1], "next_page_token": "", "total_records": 1}, None) == ([1], None, 1)
    assert strategy.parse({"webinars": [1], "next_page_token": "abc"}, None)[1] == {"token": "abc"}
    with pytest.raises(ConfigError, match="did not advance"):
        strategy.parse({"webinars": [1], "next_page_token": "abc"}, {"token": "abc"})


def test_cursor_from_body():
    strategy = pagination.Cursor(cursor_key="meta.next", records_key="data")
    assert strategy.parse({"data": [1], "meta": {"next": "c2"}}, None)[1] == {"cursor": "c2"}
    assert strategy.parse({"data": [1], "meta": {"next": None}}, {"cursor": "c2"})[1] is None
    assert strategy.params({"cursor": "c2"}) == {"limit": 100, "cursor": "c2"}
