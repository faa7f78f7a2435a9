"""Declared connector files: the schema takes every example and refuses broken files naming
the field and line; the loader registers good files beside refused ones; typed settings;
webhooks and one-record lookups of the Zoom port against the Python connector; the
`flask connectors validate` and `preview` commands against a simulator."""
import glob
import json
import os
import shutil

import pytest
import yaml
from sqlalchemy import func, select

from tests.conftest import one_backend
from tests.simulators.harness import RecordsAPI, make_records
from tests.simulators.zoom import ZoomAPI
from webapp.connectors import connector_class
from webapp.connectors.base import ReadRequest, Services
from webapp.connectors.declared import PACKAGE_DIR, FileRefused, build, load_dir, load_file
from webapp.connectors.errors import ConfigError
from webapp.connectors.settings_spec import SettingSpec
from webapp.connectors.zoom import ZoomConnector
from webapp.extensions import db
from webapp.models import Connection, Record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(PACKAGE_DIR, "*.yaml")) + glob.glob(os.path.join(ROOT, "docs", "connectors", "*.yaml")))
ITEMS = os.path.join(ROOT, "docs", "connectors", "items_api.yaml")
FAST = {"HTTP_BACKOFF_BASE_SECONDS": 0.05, "HTTP_BACKOFF_MAX_SECONDS": 0.2, "HTTP_MAX_RETRIES": 3}
ZOOM_CREDENTIALS = {"account_id": "zoom-account", "client_id": "zoom-client", "client_secret": "zoom-client-secret"}


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_every_example_file_is_valid(path):
    cls = load_file(path)
    assert cls.streams and cls.name == yaml.safe_load(open(path))["name"]


def _edit(path, change):
    spec = yaml.safe_load(open(path))
    change(spec)
    return yaml.safe_dump(spec, sort_keys=False)


def _set(*keys, value):
    def change(spec):
        node = spec
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return change


def _drop(*keys):
    def change(spec):
        node = spec
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return change


BROKEN = [
    # (the change, what the message must name)
    (_drop("streams"), "'streams' is a required property"),
    (_set("name", value="Items API"), "name: 'Items API' does not match"),
    (_set("colour", value="blue"), "'colour' was unexpected"),
    (_set("streams", "items", "pagination", "type", value="pages"), "streams.items.pagination.type"),
    (_set("streams", "items", "pagination", "page_sise", value=10), "'page_sise' was unexpected"),
    (_drop("streams", "items", "records"), "streams.items: 'records' is a required property"),
    (_set("settings", "page_size", "type", value="integer"), "settings.page_size.type"),
    (_set("settings", "mode", value={"type": "choice"}), "settings.mode: 'choices' is a required property"),
    (_drop("auth", "client_secret"), "auth: 'client_secret' is a required property"),
    (_set("auth", "type", value="oauth1"), "auth.type"),
    (_set("rate_limits", "budgets", "default", value=[50]), "rate_limits.budgets.default"),
    (_set("streams", "items", "incremental", value={"type": "cursor"}), "streams.items.incremental: 'param'"),
    (_set("streams", "items", "request", "method", value="DELETE"), "streams.items.request.method"),
    (_set("streams", "items", "record", "missing", value=[200]), "streams.items.record.missing.0"),
    # What only the semantic checks see:
    (_set("streams", "items", "request", "path", value="/items/{settings.tenant}"),
     "streams.items.request.path: names setting 'tenant'"),
    (_set("auth", "client_id", value="{credentials.key}"), "auth.client_id: names credential 'key'"),
    (_set("streams", "items", "records", value="items[?"), "streams.items.records: is not a JMESPath expression"),
    (_set("streams", "items", "request", "rate_limit", value="heavy"), "streams.items.request.rate_limit: names budget"),
    (_set("streams", "items", "parent", value={"stream": "orders"}), "streams.items.parent.stream: names stream 'orders'"),
    (_drop("streams", "items", "cursor_field"), "streams.items.incremental: a cursor increment needs"),
    (_set("streams", "items", "validate", value={"type": "objekt"}), "streams.items.validate: is not a JSON Schema"),
    (_set("webhooks", value={"scheme": "standard", "event": "type", "events": {"item.updated": {"stream": "items"}}}),
     "webhooks.scheme: the standard scheme reads credentials.webhook_secret"),
    (_set("webhooks", value={"scheme": "zoom", "event": "event", "events": {"x": {"stream": "orders"}}}),
     "webhooks.events.x.stream: names stream 'orders'"),
]


def test_every_signature_scheme_says_where_its_secret_is():
    from webapp.connectors.declared import SCHEMA, WEBHOOK_SECRETS
    from webapp.webhooks.signatures import SCHEMES

    assert set(WEBHOOK_SECRETS) == set(SCHEMES) == set(SCHEMA["$defs"]["webhooks"]["properties"]["scheme"]["enum"])


@pytest.mark.parametrize("change, message", BROKEN, ids=[m for _, m in BROKEN])
def test_a_broken_file_is_refused_with_a_message_naming_the_field(change, message):
    with pytest.raises(FileRefused) as refused:
        build(_edit(ITEMS, change), "items_api.yaml")
    text = str(refused.value)
    assert message in text, text
    assert all(p.line for p in refused.value.problems) and text.startswith("items_api.yaml:")


def test_a_problem_names_the_line_it_is_on():
    text = open(ITEMS).read().replace("type: page,", "type: pages,")
    with pytest.raises(FileRefused) as refused:
        build(text, "items_api.yaml")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "type: pages," in row)
    assert [(p.line, p.where) for p in refused.value.problems] == [(line, "streams.items.pagination.type")]
    with pytest.raises(FileRefused, match=r"items_api.yaml:3: is not valid YAML"):
        build("name: x\nbase_url: y\n  streams: [\n", "items_api.yaml")


@one_backend
def test_a_broken_file_is_refused_and_the_others_in_the_folder_still_load(app, tmp_path, caplog):
    shutil.copy(ITEMS, tmp_path / "items_api.yaml")
    (tmp_path / "broken.yaml").write_text(_edit(ITEMS, _set("name", value="broken")).replace("type: page", "type: paje"))
    (tmp_path / "zoom.yaml").write_text(_edit(ITEMS, _set("name", value="zoom")))  # a Python connector's name
    app.config["CONNECTORS_DIR"] = str(tmp_path)
    assert connector_class("items_api").source == str(tmp_path / "items_api.yaml")
    assert connector_class("zoom") is ZoomConnector
    with pytest.raises(ConfigError, match="unknown connector 'broken'"):
        connector_class("broken")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{tmp_path / 'broken.yaml'}:" in logged and "streams.items.pagination.type" in logged
    assert "connector 'zoom' already exists" in logged
    classes, problems = load_dir(str(tmp_path))
    assert sorted(c.name for c in classes) == ["items_api", "zoom"] and len(problems) == 1


def test_settings_are_declared_typed_and_checked():
    cls = load_file(os.path.join(PACKAGE_DIR, "zoom_webinars.yaml"))
    spec = {s.name: s for s in cls.settings_spec}
    assert all(isinstance(s, SettingSpec) for s in cls.settings_spec)
    assert cls.settings_fields == tuple(spec) and "page_size" in cls.settings_fields
    assert (spec["page_size"].type, spec["page_size"].default, spec["page_size"].maximum) == ("int", 300, 300)
    assert spec["child_concurrency"].advanced and not spec["user_id"].advanced
    services = Services(config=FAST, connection_id="t")
    connector = cls({"page_size": "50", "base_url": "http://127.0.0.1:9/v2"}, ZOOM_CREDENTIALS, services)
    assert connector.settings["page_size"] == 50 and connector.settings["user_id"] == "me"
    # The typed declaration is checked for every connector alike (webapp/connectors/settings_spec.py).
    with pytest.raises(ConfigError, match="page_size must be a whole number from 1 to 300"):
        cls({"page_size": 301}, ZOOM_CREDENTIALS, services)
    with pytest.raises(ConfigError, match="page_size must be a whole number"):
        cls({"page_size": "many"}, ZOOM_CREDENTIALS, services)
    with pytest.raises(ConfigError, match="lacks credential\\(s\\) client_secret"):
        cls({}, {k: v for k, v in ZOOM_CREDENTIALS.items() if k != "client_secret"}, services)
    halo = load_file(os.path.join(PACKAGE_DIR, "halopsa_tickets.yaml"))
    with pytest.raises(ConfigError, match="base_url is required"):
        halo({}, {"client_id": "a", "client_secret": "b"}, services)


def test_declared_zoom_maps_webhooks_and_looks_up_records_like_the_python_one(serve):
    zoom = ZoomAPI(webinars=12, seed=3)
    zoom.server = serve(zoom)
    settings = {"base_url": zoom.server.url + "/v2", "token_url": zoom.server.url + "/oauth/token"}
    python = ZoomConnector(settings, ZOOM_CREDENTIALS, Services(config=FAST, connection_id="t"))
    declared = connector_class("zoom_declared")(settings, ZOOM_CREDENTIALS, Services(config=FAST, connection_id="t"))
    webinar_id = next(iter(zoom.webinars))
    bodies = [json.loads(zoom.webhook_body(event, webinar_id))
              for event in ("webinar.created", "webinar.updated", "webinar.deleted", "meeting.created")]
    foreign = json.loads(zoom.webhook_body("webinar.updated", webinar_id))
    foreign["payload"]["account_id"] = "someone-else"
    for body in bodies + [foreign, {"event": "webinar.updated", "payload": {"object": {}}}]:
        assert declared.webhook_events(body) == python.webhook_events(body)
    assert declared.webhook_events(bodies[2]) == [("webinars", str(webinar_id), True)]
    assert declared.webhook_scheme == "zoom"

    request = ReadRequest("record", {"record_id": str(webinar_id)})
    page = declared.read_page(declared.stream("webinars"), request, None)
    assert page.records == python.read_page(python.stream("webinars"), request, None).records == [zoom.webinars[webinar_id]]
    zoom.delete(ids=[webinar_id])
    page = declared.read_page(declared.stream("webinars"), request, None)
    assert page.records == [] and page.next_state is None  # gone: the engine soft-deletes it


def test_expired_page_token_restarts_the_declared_listing(serve):
    zoom = ZoomAPI(webinars=30, seed=3)
    zoom.server = serve(zoom)
    settings = {"base_url": zoom.server.url + "/v2", "token_url": zoom.server.url + "/oauth/token", "page_size": 10}
    connector = connector_class("zoom_declared")(settings, ZOOM_CREDENTIALS, Services(config=FAST, connection_id="t"))
    stream, request = connector.stream("webinars"), ReadRequest("full")
    first = connector.read_page(stream, request, None)
    second = connector.read_page(stream, request, first.next_state)
    zoom.expire_page_tokens()
    restarted = connector.read_page(stream, request, second.next_state)
    assert [w["id"] for w in restarted.records] == [w["id"] for w in first.records]
    assert restarted.next_state["restarts"] == 1


@pytest.fixture
def items(serve):
    api = RecordsAPI(make_records(250), oauth_clients={"demo": "demo-secret"})
    api.server = serve(api)
    return api


def test_validate_command_accepts_a_good_file_and_names_each_problem_of_a_bad_one(app, tmp_path):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["connectors", "validate", ITEMS])
    assert result.exit_code == 0 and "connector 'items_api'" in result.output and "is valid" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(ITEMS).read().replace("{settings.page_size}", "{settings.size}").replace("records: items", "records: '['"))
    result = runner.invoke(args=["connectors", "validate", str(bad)])
    assert result.exit_code == 1
    assert "streams.items.pagination.page_size: names setting 'size'" in result.output
    assert "streams.items.records: is not a JMESPath expression" in result.output
    assert f"{bad}:" in result.output


def test_preview_prints_requests_records_and_checkpoints_and_stores_nothing(app, items):
    result = app.test_cli_runner().invoke(
        args=["connectors", "preview", ITEMS, "--setting", f"base_url={items.server.url}", "--setting", "page_size=100",
              "--credentials-stdin", "--pages", "2", "--show", "1"],
        input=json.dumps({"client_id": "demo", "client_secret": "demo-secret"}))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"GET {items.server.url}/items?page=1&page_size=100 -> HTTP 200" in out
    assert f"GET {items.server.url}/items?page=2&page_size=100 -> HTTP 200" in out and "page=3" not in out
    assert out.count("records: 100 parsed of 250") == 2 and '"id": 1,' in out
    assert 'checkpoint: {"page": 2}' in out and 'checkpoint: {"page": 3}' in out
    assert 'cursor that would be stored: "2024-01-01T00:03:20Z"' in out  # record 200's updated_at
    assert "more pages follow (stopped after 2)" in out and "demo-secret" not in out
    assert db.session.scalar(select(func.count()).select_from(Record)) == 0
    assert db.session.scalar(select(func.count()).select_from(Connection)) == 0

    result = app.test_cli_runner().invoke(
        args=["connectors", "preview", ITEMS, "--setting", f"base_url={items.server.url}", "--credentials-stdin"],
        input=json.dumps({"client_id": "demo", "client_secret": "wrong"}))
    assert result.exit_code == 1 and "refused the client credentials" in result.output and "wrong" not in result.output


def test_a_broken_file_is_named_in_the_log_when_the_app_starts(tmp_path, caplog, redis_url):
    from tests.conftest import make_app

    (tmp_path / "acme.yaml").write_text(open(ITEMS).read().replace("name: items_api", "name: acme")
                                        .replace("records: items", "record: items"))
    make_app("sqlite://", redis_url, str(tmp_path / "instance"), CONNECTORS_DIR=str(tmp_path))
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"{tmp_path / 'acme.yaml'}:" in m and "streams.items" in m and "'records' is a required property" in m
               for m in logged), logged


@one_backend
def test_list_command_names_python_and_declared_connectors_and_refused_files(app, tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\n")
    app.config["CONNECTORS_DIR"] = str(tmp_path)
    out = app.test_cli_runner().invoke(args=["connectors", "list"]).output
    rows = {line.split()[0]: line for line in out.splitlines() if not line.startswith("refused")}
    assert "python" in rows["zoom"] and "zoom_webinars.yaml" in rows["zoom_declared"]
    assert f"refused: {tmp_path / 'broken.yaml'}:1: 'base_url' is a required property" in out
