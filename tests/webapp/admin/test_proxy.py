"""Behind a reverse proxy (docs/DEPLOY.md, "Behind a proxy"): with SYNCHUB_TRUSTED_PROXIES
the login brake counts real client addresses and https at the proxy counts as https; without
it the forwarded headers are ignored (anyone can send them), and a shared address still
locks nobody out."""
import pytest
import requests

from tests.conftest import make_app
from tests.webapp.admin.support import FAST_HASHES, PASSWORD, csrf_token, new_client, one_backend

PROXY = "10.0.0.2"  # the address every request arrives from: the proxy's


@pytest.fixture
def behind_proxy(app):
    """The same database and Redis, served by an app told that one proxy is in front."""
    proxied = make_app(app.config["SQLALCHEMY_DATABASE_URI"], app.config["REDIS_URL"], app.instance_path,
                       TRUSTED_PROXIES=1, ARGON2_PROFILE=FAST_HASHES, LOGIN_MAX_FAILURES_PER_IP=30)
    yield proxied
    from webapp.extensions import db

    with proxied.app_context():
        db.engine.dispose()


def _attempt(application, email, password, client_address=None):
    client = new_client(application)
    headers = {"X-Forwarded-For": client_address} if client_address else {}
    environ = {"REMOTE_ADDR": PROXY}
    token = csrf_token(client.get("/admin/login", headers=headers, environ_base=environ).get_data(as_text=True))
    return client.post("/admin/login", headers=headers, environ_base=environ,
                       data={"email": email, "password": password, "csrf_token": token})


def _text(response):
    return response.get_data(as_text=True)


def test_thirty_failures_through_an_undeclared_proxy_lock_nobody_out(app, admin_user):
    """All clients share the proxy's address. The brake trips, but the admin's right
    password still signs in; a guess from the braked address learns nothing (unknown and
    known emails get the same answer)."""
    for i in range(30):
        assert _attempt(app, f"someone{i}@example.com", "guess").status_code == 401
    braked = "Too many failed sign-in attempts from your address"
    assert braked in _text(_attempt(app, "nobody@example.com", "guess"))
    assert braked in _text(_attempt(app, admin_user, "a wrong password"))
    assert _attempt(app, admin_user, PASSWORD).status_code == 302
    # The forwarded header is not believed without the setting: a new address claimed in it
    # does not escape the brake.
    assert braked in _text(_attempt(app, "nobody@example.com", "guess", client_address="203.0.113.9"))


def test_a_declared_proxy_lets_the_brake_count_each_real_client(app, behind_proxy, admin_user):
    for i in range(30):
        assert _attempt(behind_proxy, f"someone{i}@example.com", "guess", client_address="203.0.113.7").status_code == 401
    braked = "Too many failed sign-in attempts from your address"
    assert braked in _text(_attempt(behind_proxy, "nobody@example.com", "guess", client_address="203.0.113.7"))
    other = _attempt(behind_proxy, "nobody@example.com", "guess", client_address="198.51.100.4")
    assert "Wrong email or password" in _text(other)
    # Only the last hop is believed: a client that writes its own X-Forwarded-For in front of
    # the proxy's entry is still counted by the address the proxy saw.
    spoofed = _attempt(behind_proxy, "nobody@example.com", "guess", client_address="1.2.3.4, 203.0.113.7")
    assert braked in _text(spoofed)


def test_https_at_the_proxy_counts_as_https_only_when_the_proxy_is_declared(app, behind_proxy):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "hub.example"}
    response = behind_proxy.test_client().get("/admin/login", headers=forwarded)
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Secure" in response.headers["Set-Cookie"]
    # The same headers sent straight to an app without the setting are someone's claim.
    response = app.test_client().get("/admin/login", headers=forwarded)
    assert "Strict-Transport-Security" not in response.headers
    assert "Secure" in response.headers["Set-Cookie"]  # SYNCHUB_SECURE_COOKIES decides that, not the scheme


def test_a_declared_proxy_keeps_forms_working_for_its_public_host_name(behind_proxy, admin_user):
    """The origin check compares the browser's Origin with the host the proxy forwarded."""
    client = new_client(behind_proxy)
    # The test client keeps the Secure cookie only for an https URL; the proxy talks plain
    # http to us, and says what the browser used in the X-Forwarded-* headers.
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hub.example", "X-Forwarded-For": "203.0.113.7",
               "Referer": "https://hub.example/admin/login"}
    token = csrf_token(client.get("/admin/login", headers=headers, base_url="https://localhost").get_data(as_text=True))
    response = client.post("/admin/login", headers={**headers, "Origin": "https://hub.example"},
                           base_url="https://localhost",
                           data={"email": admin_user, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == "/admin/"
    response = client.post("/admin/logout", headers={**headers, "Origin": "https://evil.example"},
                           base_url="https://localhost", data={"csrf_token": token})
    assert response.status_code == 403


@one_backend
def test_gunicorn_itself_believes_the_scheme_from_a_proxy_on_the_same_machine(live_server):
    """Through the real web server: gunicorn takes X-Forwarded-Proto from 127.0.0.1 and ::1
    (its forwarded_allow_ips), so a TLS proxy on the same machine gets HSTS even without
    SYNCHUB_TRUSTED_PROXIES (docs/DEPLOY.md, "Behind a proxy")."""
    behind = requests.get(live_server.url + "/admin/login", headers={"X-Forwarded-Proto": "https"}, timeout=10)
    assert behind.headers["Strict-Transport-Security"] == "max-age=31536000"
    plain = requests.get(live_server.url + "/admin/login", timeout=10)
    assert "Strict-Transport-Security" not in plain.headers
