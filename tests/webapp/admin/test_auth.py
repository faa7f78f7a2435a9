"""Login, the brake on guessing, CSRF, security headers and the users CLI."""
import re
from datetime import timedelta


from tests.webapp.admin.support import PASSWORD, csrf_token, login, new_client


def _admin_routes(app):
    """Every route under /admin, whichever area added it, with a URL built for it (ids need
    not exist: login comes first)."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or rule.endpoint == "admin.login" or rule.endpoint.endswith(".static"):
            continue
        url = re.sub(r"<(?:int:)?(\w+)>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, url, rule.websocket


def test_logged_out_requests_to_every_admin_route_go_to_login(app):
    client = new_client(app)
    routes = list(_admin_routes(app))
    assert len(routes) >= 12  # the pages, their POSTs, the socket and the JSON endpoint
    for method, url, websocket in routes:
        if websocket:
            response = client.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade"})
            assert response.status_code == 401, url
            continue
        response = client.open(url, method=method)
        if url.endswith(".json"):
            assert response.status_code == 401, url
        else:
            assert response.status_code == 302, (method, url, response.status_code)
            assert response.headers["Location"].startswith("/admin/login"), (method, url)


def test_login_returns_to_the_page_asked_for(app, admin_user):
    client = new_client(app)
    response = client.get("/admin/runs?status=failed")
    assert response.headers["Location"] == "/admin/login?next=/admin/runs?status%3Dfailed"
    page = client.get(response.headers["Location"])
    response = client.post(response.headers["Location"], data={
        "email": admin_user, "password": PASSWORD, "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.headers["Location"] == "/admin/runs?status=failed"
    assert client.get("/admin/runs?status=failed").status_code == 200


def test_login_never_redirects_off_site(app, admin_user):
    client = new_client(app)
    page = client.get("/admin/login")
    response = client.post("/admin/login?next=//evil.example/x", data={
        "email": admin_user, "password": PASSWORD, "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.headers["Location"] == "/admin/"


def test_password_is_stored_as_argon2id(app, admin_user):
    from webapp.admin.auth import hash_password, verify_password
    from webapp.extensions import db
    from webapp.models import User

    user = db.session.query(User).one()
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash
    assert verify_password(user.password_hash, PASSWORD)
    assert not verify_password(user.password_hash, PASSWORD + "x")
    # Outside tests the cost is RFC 9106's low-memory recommendation.
    app.config["ARGON2_PROFILE"] = "RFC_9106_LOW_MEMORY"
    assert hash_password(PASSWORD).startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_login_upgrades_a_hash_made_with_weaker_parameters(app, admin_user):
    from webapp.extensions import db
    from webapp.models import User

    app.config["ARGON2_PROFILE"] = "RFC_9106_LOW_MEMORY"
    login(new_client(app), admin_user)
    db.session.expire_all()
    assert db.session.query(User).one().password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_wrong_password_is_refused(app, admin_user):
    client = new_client(app)
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": admin_user, "password": "nope",
                                                 "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 401
    assert "Wrong email or password" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_account_locks_after_repeated_failures_even_for_the_right_password(app, admin_user):
    from webapp.extensions import db
    from webapp.models import User

    client = new_client(app)
    token = csrf_token(client.get("/admin/login").get_data(as_text=True))
    for _ in range(app.config["LOGIN_MAX_FAILURES"]):
        assert client.post("/admin/login", data={"email": admin_user, "password": "guess",
                                                 "csrf_token": token}).status_code == 401
    response = client.post("/admin/login", data={"email": admin_user, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 401
    assert "Too many failed sign-in attempts" in response.get_data(as_text=True)
    db.session.expire_all()
    user = db.session.query(User).one()
    assert user.locked_until is not None
    # Once the lock has passed, the right password works again and the counters reset.
    user.locked_until = user.locked_until - timedelta(seconds=app.config["LOGIN_LOCK_SECONDS"] + 1)
    db.session.commit()
    assert client.post("/admin/login", data={"email": admin_user, "password": PASSWORD,
                                             "csrf_token": token}).status_code == 302
    db.session.expire_all()
    assert db.session.query(User).one().locked_until is None


def test_client_address_is_braked_across_unknown_accounts(app, redis):
    app.config["LOGIN_MAX_FAILURES_PER_IP"] = 3
    client = new_client(app)
    token = csrf_token(client.get("/admin/login").get_data(as_text=True))
    for i in range(3):
        response = client.post("/admin/login", data={"email": f"nobody{i}@example.com", "password": "x",
                                                     "csrf_token": token})
        assert "Wrong email or password" in response.get_data(as_text=True)
    response = client.post("/admin/login", data={"email": "nobody9@example.com", "password": "x", "csrf_token": token})
    assert "Too many failed sign-in attempts from your address" in response.get_data(as_text=True)


def test_post_without_csrf_token_is_refused(client, make_connection):
    from webapp.extensions import db
    from webapp.models import Run

    connection = make_connection(name="demo")
    response = client.post(f"/admin/connections/{connection.id}/sync", data={"mode": "full"})
    assert response.status_code == 400
    assert "form" in response.get_data(as_text=True).lower()
    response = client.post(f"/admin/connections/{connection.id}/sync", data={"mode": "full", "csrf_token": "forged"})
    assert response.status_code == 400
    assert db.session.query(Run).count() == 0


def test_every_state_changing_admin_request_is_csrf_checked_whichever_area_added_it(app, client):
    """Pages of areas nested in the admin blueprint (webhooks, outbox) get the same guard, and
    so does any method but GET; a valid token from another site's page is refused too."""
    changes = [(method, url) for method, url, _ in _admin_routes(app) if method != "GET"]
    assert any(url.startswith("/admin/webhooks") for _, url in changes)
    assert any(url.startswith("/admin/outbox") for _, url in changes)
    token = csrf_token(client.get("/admin/").get_data(as_text=True))
    for method, url in changes:
        response = client.open(url, method=method, data={})
        assert response.status_code == 400, url
        assert "did not come from this site" in response.get_data(as_text=True), url
        response = client.open(url, method=method, data={"csrf_token": token},
                               headers={"Origin": "https://evil.example"})
        assert response.status_code == 403, url
        assert "came from a page of another site" in response.get_data(as_text=True), url
    assert client.get("/admin/").status_code == 200  # none of it signed the client out


def test_login_form_needs_csrf_token(app, admin_user):
    client = new_client(app)
    client.get("/admin/login")
    response = client.post("/admin/login", data={"email": admin_user, "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_changing_the_password_ends_existing_sessions(app, client, admin_user):
    from webapp.admin.auth import set_password

    assert client.get("/admin/").status_code == 200
    set_password(admin_user, "another long password")
    assert client.get("/admin/").status_code == 302


def test_logout_ends_the_session(client):
    token = csrf_token(client.get("/admin/").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/").status_code == 302


def _session_cookie(test_client):
    return test_client.get_cookie("synchub_session").value


def test_a_copy_of_the_session_cookie_stops_working_at_logout(app, client):
    """The cookie is signed, not stored: without the ended-session record a copy taken
    before signing out would go on working until it expired."""
    stolen = _session_cookie(client)
    thief = new_client(app)
    thief.set_cookie("synchub_session", stolen)
    assert thief.get("/admin/").status_code == 200
    token = csrf_token(client.get("/admin/").get_data(as_text=True))
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    response = thief.get("/admin/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login")
    assert thief.get("/admin/runs/1/progress.json").status_code == 401
    # Signing in again makes a new session, which works; the old copy stays dead.
    login(client, "admin@example.com")
    assert client.get("/admin/").status_code == 200
    assert thief.get("/admin/").status_code == 302


def test_login_makes_a_new_session_whatever_the_browser_had_before(app, admin_user):
    """Session fixation: nothing a visitor (or someone who planted a cookie) had before
    signing in carries over, and each sign-in gets its own session id."""
    from flask.sessions import SecureCookieSessionInterface

    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    client = new_client(app)
    client.get("/admin/login")
    before = serializer.loads(_session_cookie(client))
    login(client, admin_user)
    after = serializer.loads(_session_cookie(client))
    assert after["sid"] and after.get("csrf_token") != before.get("csrf_token")
    other = new_client(app)
    login(other, admin_user)
    assert serializer.loads(_session_cookie(other))["sid"] != after["sid"]
    # A cookie signed with our key but not made by a login (no session id) is not a session.
    forged = new_client(app)
    forged.set_cookie("synchub_session", serializer.dumps({k: v for k, v in after.items() if k != "sid"}))
    assert forged.get("/admin/").status_code == 302


def test_session_cookie_flags_follow_the_settings(app, admin_user):
    app.config["SESSION_COOKIE_SECURE"] = False  # SYNCHUB_SECURE_COOKIES=0 on a trusted plain-http network
    cookie = login(new_client(app), admin_user).headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    app.config["SESSION_COOKIE_SECURE"] = True
    cookie = login(new_client(app), admin_user).headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie


def test_pages_carry_security_headers_and_a_secure_session_cookie(app, admin_user):
    client = new_client(app)
    page = client.get("/admin/login")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    response = login(client, admin_user)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("synchub_session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Lax"):
        assert flag in cookie
    assert client.get("/admin/").headers["Cache-Control"] == "no-store"


def test_pages_have_no_inline_script_or_external_asset(client, make_connection):
    make_connection(name="demo")
    for url in ("/admin/", "/admin/runs", "/admin/health", "/admin/connections/new?connector=sandbox"):
        html = client.get(url).get_data(as_text=True)
        for tag in re.findall(r"<script[^>]*>", html):
            assert 'src="/admin/static/' in tag, (url, tag)
        assert not re.search(r"""(src|href)=["']https?://""", html), url
        assert " style=" not in html and "<style" not in html, url


def test_create_admin_cli(app):
    from webapp.extensions import db
    from webapp.models import User

    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create-admin", "Ops@Example.com"], input="a long password\na long password\n")
    assert result.exit_code == 0, result.output
    assert "a long password" not in result.output
    user = db.session.query(User).one()
    assert user.email == "ops@example.com" and user.password_hash.startswith("$argon2id$")
    result = runner.invoke(args=["users", "create-admin", "ops@example.com", "--password", "another long one"])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(args=["users", "create-admin", "b@example.com", "--password", "short"])
    assert result.exit_code == 1 and "at least 10 characters" in result.output
    login(new_client(app), "ops@example.com", "a long password")


def test_form_error_explains_secure_cookies_on_plain_http_to_a_remote_host(app, admin_user):
    client = new_client(app)
    response = client.post("/admin/login", base_url="http://192.0.2.10:5000",
                           data={"email": admin_user, "password": PASSWORD})
    assert response.status_code == 400
    assert "SYNCHUB_SECURE_COOKIES=0" in response.get_data(as_text=True)
    local = client.post("/admin/login", data={"email": admin_user, "password": PASSWORD})
    assert "SYNCHUB_SECURE_COOKIES" not in local.get_data(as_text=True)


def test_security_headers_a_view_set_itself_are_kept_once(app):
    @app.get("/test-own-frame-policy")
    def _own_frame_policy():
        return "", 200, {"X-Frame-Options": "SAMEORIGIN", "x-content-type-options": "nosniff"}

    response = app.test_client().get("/test-own-frame-policy")
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers.getlist("X-Content-Type-Options") == ["nosniff"]  # matched whatever its case
    assert "Content-Security-Policy" in response.headers  # the ones it did not set are added
