"""What a declared file can say, read against the records simulator over real HTTP: each
pagination type, auth in a header, a bearer token or a query key, error mapping and a
provider's own Retry-After header."""
import json
import time

import pytest
import yaml
from werkzeug.wrappers import Request, Response

from tests.simulators.harness import RecordsAPI, make_records
from webapp.connectors.base import ReadRequest, Services
from webapp.connectors.declared import build
from webapp.connectors.errors import AuthError, HttpError, TransientError

FAST = {"HTTP_BACKOFF_BASE_SECONDS": 0.05, "HTTP_BACKOFF_MAX_SECONDS": 0.2, "HTTP_MAX_RETRIES": 3}


def _connector(url, stream=None, credentials=None, **top):
    spec = {"name": "items_t", "base_url": url,
            "streams": {"items": {"request": {"path": "/items"}, "records": "items", "total": "total", **(stream or {})}},
            **top}
    if credentials:
        spec["credentials"] = {name: {} for name in credentials}
    cls = build(yaml.safe_dump(spec), "items_t.yaml")
    return cls({}, credentials or {}, Services(config=FAST, connection_id="t"))


def _read_all(connector):
    records, state = [], None
    while True:
        page = connector.read_page(connector.stream("items"), ReadRequest("full"), state)
        records += page.records
        state = page.next_state
        if state is None:
            return records


@pytest.fixture
def items(serve):
    api = RecordsAPI(make_records(250))
    api.server = serve(api)
    return api


@pytest.mark.parametrize("pagination, requests", [
    ({"type": "page", "page_param": "page", "size_param": "page_size", "page_size": 100}, 3),
    ({"type": "offset", "offset_param": "offset", "limit_param": "limit", "page_size": 100}, 3),
    ({"type": "token", "token": "next_page_token", "token_param": "page_token", "size_param": "page_size",
      "page_size": 100}, 3),
    ({"type": "cursor", "record_field": "id", "cursor_param": "after", "has_more": "has_more",
      "size_param": "page_size", "page_size": 100}, 3),
    ({"type": "cursor", "record_field": "id", "cursor_param": "after", "size_param": "page_size", "page_size": 100}, 4),
], ids=["page", "offset", "token", "cursor-has-more", "cursor-until-empty"])
def test_each_pagination_reads_every_record_once(items, pagination, requests):
    records = _read_all(_connector(items.server.url, {"pagination": pagination}))
    assert [r["id"] for r in records] == list(range(1, 251))
    assert len(items.server.log.entries("/items")) == requests


def test_link_header_pagination_follows_rel_next(serve):
    def app(environ, start_response):
        page = int(Request(environ).args.get("page", 1))
        headers = {"Link": f'<http://{environ["HTTP_HOST"]}/items?page={page + 1}&per_page=2>; rel="next"'} if page < 3 else {}
        body = json.dumps({"items": [{"id": 2 * page - 1}, {"id": 2 * page}]})
        return Response(body, headers=headers, content_type="application/json")(environ, start_response)

    server = serve(app)
    connector = _connector(server.url, {"pagination": {"type": "link", "size_param": "per_page", "page_size": 2}})
    assert [r["id"] for r in _read_all(connector)] == [1, 2, 3, 4, 5, 6]
    assert [e.query for e in server.log.entries("/items")] == ["per_page=2", "page=2&per_page=2", "page=3&per_page=2"]


def test_a_mapped_status_becomes_the_error_class_the_file_names(items):
    items.server.faults.status(409, {"message": "row locked, try later"}, path="/items", times=2)
    with pytest.raises(HttpError):  # unmapped: a 4xx is a ConfigError the run fails with
        _read_all(_connector(items.server.url))
    mapped = _connector(items.server.url, errors={"map": [{"status": 409, "body_contains": "locked", "as": "transient"}]})
    with pytest.raises(TransientError, match="HTTP 409 row locked"):  # retried by the engine's policy
        _read_all(mapped)


def test_retry_after_under_the_providers_own_header_name_is_waited_out(items):
    items.server.faults.status(429, {"message": "slow down"}, headers={"X-Wait-Seconds": "1"}, path="/items")
    connector = _connector(items.server.url, errors={"retry_after_header": "X-Wait-Seconds"})
    assert len(_read_all(connector)) == 100
    throttled, retried = items.server.log.entries("/items")[:2]
    assert throttled.status == 429 and retried.time - throttled.time >= 0.95  # not the 0.05 s backoff


def test_bearer_token_and_an_api_key_in_the_query(serve, items):
    guarded = RecordsAPI(make_records(5), auth_token="static-token")
    guarded.server = serve(guarded)
    bearer = {"type": "bearer", "token": "{credentials.token}"}
    assert len(_read_all(_connector(guarded.server.url, auth=bearer, credentials={"token": "static-token"}))) == 5
    with pytest.raises(AuthError):
        _read_all(_connector(guarded.server.url, auth=bearer, credentials={"token": "wrong-token"}))

    key = {"type": "api_key", "in": "query", "name": "api_key", "key": "{credentials.key}"}
    connector = _connector(items.server.url, {"record": {"path": "/items/{record_id}"}}, auth=key,
                           credentials={"key": "sekrit-key-1"})
    assert len(_read_all(connector)) == 100  # no pagination: one page
    assert items.server.log.entries("/items")[0].args["api_key"] == "sekrit-key-1"
    with pytest.raises(HttpError) as missing:  # a 4xx names the URL, never the key
        connector.read_page(connector.stream("items"), ReadRequest("record", {"record_id": "999"}), None)
    assert "api_key=REDACTED" in str(missing.value) and "sekrit" not in str(missing.value)


def test_a_rotated_refresh_token_is_persisted_so_the_next_connector_spends_the_new_one(app, make_connection, serve):
    from tests.simulators.highlevel import HighLevelAPI
    from webapp.extensions import db
    from webapp.models import Connection

    ghl = HighLevelAPI(orders=2, products=7)
    ghl.server = serve(ghl)
    credentials = {"client_id": "ghl-client", "client_secret": "ghl-client-secret", "refresh_token": "rt-initial"}
    conn = make_connection(name="ghl", connector="rest", credentials=credentials)
    spec = {"name": "ghl_products", "base_url": ghl.server.url, "headers": {"Version": "2021-07-28"},
            "credentials": {name: {} for name in credentials},
            "auth": {"type": "oauth2_refresh_token", "token_url": ghl.server.url + "/oauth/token",
                     "client_id": "{credentials.client_id}", "client_secret": "{credentials.client_secret}"},
            "streams": {"products": {"primary_key": "_id", "request": {"path": "/products/", "params": {"locationId": "loc-sim-1"}},
                                     "records": "products", "total": "total[0].total",
                                     "pagination": {"type": "offset", "offset_param": "offset", "limit_param": "limit",
                                                    "page_size": 5}}}}
    cls = build(yaml.safe_dump(spec), "ghl_products.yaml")

    def read():
        db.session.expire_all()
        stored = db.session.get(Connection, conn.id).credentials
        connector = cls({}, stored, Services(config=FAST, connection_id=conn.id, app=app))
        records, state = [], None
        while True:
            page = connector.read_page(connector.stream("products"), ReadRequest("full"), state)
            records, state = records + page.records, page.next_state
            if state is None:
                return records

    assert len(read()) == 7
    db.session.expire_all()
    rotated = db.session.get(Connection, conn.id).credentials
    assert rotated["refresh_token"] == ghl.refresh_token != "rt-initial"  # stored before it was used
    ghl.expire_tokens()
    assert len(read()) == 7  # a new connector renews with the stored (new) refresh token
    assert ghl.refresh_reuse == 0 and ghl.token_requests == 2
