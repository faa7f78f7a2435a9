"""Who may call what: every route of the app's URL map, called with each kind of credential,
gets the answer the table below says. A route missing from the table fails the test, so a
new route cannot ship without someone deciding who may call it.

The matrix checks the gate, not the view: "ok" means the request got past authentication,
CSRF and the origin check (the view may still answer 404 for an id that does not exist, or
400 for an empty body); the other answers are the gate's refusals."""
import json
import re

import pytest

from tests.webapp.admin.support import admin_user, csrf_token, login, new_client  # noqa: F401  (admin_user: a fixture)
from tests.support import TAKES_WEBHOOKS

CRON_SECRET = "cron-secret-for-the-matrix-0123456789"
CREDENTIALS = ("anonymous", "api_token", "revoked_token", "admin_session", "foreign_origin", "cron_secret",
               "wrong_cron_secret")
SESSIONS = ("admin_session", "foreign_origin")
OUR_ORIGIN, FOREIGN_ORIGIN = "http://localhost", "https://evil.example"

# What each kind of route answers to each credential.
_ANY = dict.fromkeys(CREDENTIALS, "ok")
_NO_SESSION = {"anonymous": "login", "api_token": "login", "revoked_token": "login", "cron_secret": "login",
               "wrong_cron_secret": "login"}
POLICIES = {
    "public": _ANY,
    # Admin pages: a signed-in session; reading them from a page of another site is harmless
    # (the browser does not let that page see the answer).
    "admin_read": {**_NO_SESSION, "admin_session": "ok", "foreign_origin": "ok"},
    # Anything that changes state, and the live socket: a session, the CSRF token, and no
    # other site's origin.
    "admin_change": {**_NO_SESSION, "admin_session": "ok", "foreign_origin": "403"},
    # Signing out: as admin_change, but its success is a redirect to the login page too
    # (test_auth.py checks that the session really ended).
    "sign_out": {**_NO_SESSION, "admin_session": "login", "foreign_origin": "403"},
    # The login form: CSRF-checked, no session needed, not from another site.
    "login_form": {**dict.fromkeys(CREDENTIALS, "csrf"), "admin_session": "ok", "foreign_origin": "403"},
    "api_token": {**dict.fromkeys(CREDENTIALS, "401"), "api_token": "ok"},
    "cron": {**dict.fromkeys(CREDENTIALS, "401"), "cron_secret": "ok"},
    # Webhooks carry the provider's signature, which none of these credentials is.
    "webhook_signature": dict.fromkeys(CREDENTIALS, "401"),
}

# (endpoint, method) -> policy. Every route of the app must be here.
ROUTES = {
    ("index", "GET"): "public",  # a redirect to the dashboard, which has its own guard
    ("static", "GET"): "public",
    ("health.healthz", "GET"): "public",
    ("health.readyz", "GET"): "public",
    ("metrics.metrics_endpoint", "GET"): "public",  # unless SYNCHUB_METRICS_TOKEN is set: tested below
    ("admin.static", "GET"): "public",
    ("admin.login", "GET"): "public",
    ("admin.login", "POST"): "login_form",
    ("admin.logout", "POST"): "sign_out",
    ("admin.dashboard", "GET"): "admin_read",
    ("admin.connection_new", "GET"): "admin_read",
    ("admin.connection_new", "POST"): "admin_change",
    ("admin.connection_edit", "GET"): "admin_read",
    ("admin.connection_edit", "POST"): "admin_change",
    ("admin.sync_now", "POST"): "admin_change",
    ("admin.health", "GET"): "admin_read",
    ("admin.issues", "GET"): "admin_read",
    ("admin.stats_page", "GET"): "admin_read",
    ("admin.connection_report", "GET"): "admin_read",
    ("admin.connection_report_csv", "GET"): "admin_read",
    ("admin.connection_test", "POST"): "admin_change",
    ("admin.history", "GET"): "admin_read",
    ("admin.run_page", "GET"): "admin_read",
    ("admin.run_cancel", "POST"): "admin_change",
    ("admin.live_socket", "GET"): "admin_change",
    ("admin.progress_json", "GET"): "admin_read",
    ("admin.tokens", "GET"): "admin_read",
    ("admin.token_create", "POST"): "admin_change",
    ("admin.token_revoke", "POST"): "admin_change",
    ("admin.outbox.index", "GET"): "admin_read",
    ("admin.outbox.event", "GET"): "admin_read",
    ("admin.outbox.discard", "POST"): "admin_change",
    ("admin.outbox.retry", "POST"): "admin_change",
    ("admin.webhooks.deliveries", "GET"): "admin_read",
    ("admin.webhooks.replay", "POST"): "admin_change",
    ("api.list_connections", "GET"): "api_token",
    ("api.show_connection", "GET"): "api_token",
    ("api.list_issues", "GET"): "api_token",
    ("api.connection_issues_list", "GET"): "api_token",
    ("api.trigger_run", "POST"): "api_token",
    ("api.stream_records", "GET"): "api_token",
    ("api.post_event", "POST"): "api_token",
    ("api.api_health", "GET"): "api_token",
    ("api.api_stats", "GET"): "api_token",
    ("api.openapi_json", "GET"): "public",  # the contract, no data
    ("api.publish_events", "POST"): "api_token",
    ("api.list_events", "GET"): "api_token",
    ("api.show_event", "GET"): "api_token",
    ("api.list_runs", "GET"): "api_token",
    ("api.show_run", "GET"): "api_token",
    ("api.cancel_run", "POST"): "api_token",
    ("api.run_events", "GET"): "api_token",
    ("api.run_job", "POST"): "cron",
    ("api.cron_drain", "POST"): "cron",
    ("api.cron_sync", "POST"): "cron",
    ("webhooks.receive", "POST"): "webhook_signature",
}

# Values for URL variables: things that exist where it matters (a connection that takes
# webhooks, so its URL answers 401 rather than 404), harmless ones elsewhere (a cron job
# that does not exist: the gate is what is being tested, not the job).
URL_VALUES = {"connection_key": "shop", "key": "no-such-connection", "job": "no-such-job",
              "filename": "admin.css", "stream": "items"}


def _url(rule):
    def value(match):
        return URL_VALUES.get(match.group(2), "987654")

    return re.sub(r"<(?:(\w+):)?(\w+)>", value, rule.rule)


def _routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


@pytest.fixture
def setup(app, admin_user, make_connection):
    from webapp.api.auth import create_token, revoke_token
    from webapp.extensions import db
    from webapp.models import ApiToken

    app.config["CRON_SECRET"] = CRON_SECRET
    app.config["API_MAX_AUTH_FAILURES"] = 10**6  # the brake has its own test; here every call is judged alone
    make_connection(name="shop", settings=TAKES_WEBHOOKS, credentials={"webhook_secret": "s" * 32})
    token = create_token("matrix")
    revoked = create_token("revoked")
    revoke_token(db.session.query(ApiToken).filter_by(name="revoked").one().id)
    return {"token": token, "revoked": revoked, "admin": admin_user}


def _call(app, setup, rule, method, credential):
    client = new_client(app)
    headers, data = {}, {}
    if credential in SESSIONS:
        login(client, setup["admin"])
        data["csrf_token"] = csrf_token(client.get("/admin/tokens").get_data(as_text=True))
        headers["Origin"] = FOREIGN_ORIGIN if credential == "foreign_origin" else OUR_ORIGIN
    elif credential == "api_token":
        headers["Authorization"] = f"Bearer {setup['token']}"
    elif credential == "revoked_token":
        headers["Authorization"] = f"Bearer {setup['revoked']}"
    elif credential == "cron_secret":
        headers["X-Cron-Secret"] = CRON_SECRET
    elif credential == "wrong_cron_secret":
        headers["X-Cron-Secret"] = CRON_SECRET[:-1] + "X"
    if rule.websocket:
        headers.update({"Upgrade": "websocket", "Connection": "Upgrade"})
    url = _url(rule)
    if url.startswith(("/api/", "/webhooks/")) and method == "POST":
        return client.open(url, method=method, headers=headers, json={})
    return client.open(url, method=method, headers=headers, data=data if method == "POST" else None)


def _answer(response):
    """What the gate did, in the table's words."""
    status, body = response.status_code, response.get_data(as_text=True)
    if status == 302 and response.headers["Location"].startswith("/admin/login"):
        return "login"
    if status == 401 and "log in to the admin first" in body:
        return "login"
    if status == 400 and "did not come from this site" in body:
        return "csrf"
    if status in (401, 403, 429):
        return str(status)
    assert status < 500, (status, body[:300])
    return "ok"


def test_every_route_is_in_the_table(app):
    present = {(rule.endpoint, method) for rule, method in _routes(app)}
    missing = sorted(present - set(ROUTES))
    assert not missing, f"routes without a line in ROUTES (decide who may call them): {missing}"
    gone = sorted(set(ROUTES) - present)
    assert not gone, f"lines in ROUTES for routes that no longer exist: {gone}"


def test_every_route_answers_each_credential_as_the_table_says(app, setup):
    wrong = []
    for rule, method in _routes(app):
        policy = ROUTES.get((rule.endpoint, method))
        if policy is None:
            continue  # the test above names it
        for credential in CREDENTIALS:
            if rule.websocket and POLICIES[policy][credential] == "ok":
                continue  # a real socket is needed: tests/webapp/test_live.py opens them (and is refused cross-site)
            got = _answer(_call(app, setup, rule, method, credential))
            if got != POLICIES[policy][credential]:
                wrong.append(f"{method} {rule.rule} as {credential}: {got}, expected {POLICIES[policy][credential]}")
    assert not wrong, "\n".join(wrong)


def test_metrics_follow_their_token_when_one_is_set(app):
    app.config["METRICS_TOKEN"] = "metrics-token-0123456789"
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}).status_code == 200


def test_the_openapi_document_marks_every_api_route_but_itself_as_secured(app):
    """The published contract agrees with the table: what the table calls public is what the
    document leaves without `security`."""
    document = json.loads(app.test_client().get("/api/openapi.json").get_data(as_text=True))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/api/openapi.json":
                continue
            assert operation.get("security", document.get("security")), (method, path)
