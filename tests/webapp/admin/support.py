"""Helpers for admin and live tests: an admin account, logging in through the real form,
and the app served by gunicorn (gthread, as in the Procfile) in its own process."""
import contextvars
import os
import re
import signal
import subprocess
import sys

import pytest
import requests
from flask.testing import FlaskClient

from tests.conftest import BACKENDS
from tests.support import ROOT, free_port, process_env, wait_for

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def csrf_token(html):
    match = _CSRF.search(html)
    assert match, "the page has no CSRF token"
    return match.group(1)


class IsolatedClient(FlaskClient):
    """Each request in an empty context, so it gets its own app context, `g` and database
    session, as on a real server. Otherwise the test's app context would carry `g` (and with
    it the logged-in user and the CSRF token) from one request to the next."""

    def open(self, *args, **kwargs):
        return contextvars.Context().run(super().open, *args, **kwargs)


def new_client(app):
    return IsolatedClient(app, app.response_class, use_cookies=True)


# Tests that start a web server (and a browser) run on one backend, PostgreSQL when the run
# has it: what they check is the web side; the cheap tests cover both databases.
one_backend = pytest.mark.parametrize("app", BACKENDS[-1:], indirect=True)

# Real argon2id at its cheapest cost: tests hash and check many passwords.
FAST_HASHES = "CHEAPEST"


@pytest.fixture
def admin_user(app):
    from webapp.admin.auth import create_admin

    app.config["ARGON2_PROFILE"] = FAST_HASHES
    create_admin("admin@example.com", PASSWORD)
    return "admin@example.com"


@pytest.fixture
def client(app, admin_user):
    """A test client logged in through the login form."""
    test_client = new_client(app)
    login(test_client, admin_user)
    return test_client


def login(test_client, email, password=PASSWORD):
    page = test_client.get("/admin/login")
    response = test_client.post("/admin/login", data={"email": email, "password": password,
                                                      "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return response


class Server:
    """`gunicorn wsgi:app` on 127.0.0.1 with the test's database, Redis and keys."""

    def __init__(self, app, threads=64):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(app.instance_path, f"gunicorn-{self.port}.log")
        self.threads = threads
        self.proc = None

    def start(self):
        args = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", str(self.threads),
                "--workers", "1", "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "1", "wsgi:app"]
        self.log = open(self.log_path, "wb")
        env = process_env(self.app, SYNCHUB_ARGON2_PROFILE=self.app.config.get("ARGON2_PROFILE"))
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.output()}")
            try:
                return requests.get(self.url + "/healthz", timeout=5).status_code == 200
            except requests.RequestException:  # not listening yet, or still importing the app
                return False

        wait_for(up, timeout=30, message="gunicorn to answer /healthz")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def login(self, email, password=PASSWORD):
        """A requests.Session logged in through the form, and its Cookie header for websockets.
        The cookie is carried by hand: it is Secure, which browsers send to http://127.0.0.1
        (a trustworthy origin) but requests only sends over https."""
        session = requests.Session()
        page = session.get(self.url + "/admin/login", timeout=10)
        session.headers["Cookie"] = _cookie(page)
        response = session.post(self.url + "/admin/login", allow_redirects=False, timeout=10,
                                data={"email": email, "password": password, "csrf_token": csrf_token(page.text)})
        assert response.status_code == 302, response.text[:500]
        session.headers["Cookie"] = _cookie(response)
        return session, session.headers["Cookie"]


def browser_login(browser, server, email, width=1280):
    """A new tab of `browser`, signed in to `server` through the login form."""
    page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.goto(server.url + "/admin/login")
    page.fill('input[name="email"]', email)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button:has-text("Sign in")')
    page.wait_for_url(server.url + "/admin/")
    return page


def _cookie(response):
    return "; ".join(f"{c.name}={c.value}" for c in response.cookies)


_STARTED = {}  # database URL -> Server; module-level, as modules in two folders share it


@pytest.fixture(scope="session")
def _servers():
    yield _STARTED
    for server in list(_STARTED.values()):
        server.stop()
    _STARTED.clear()


@pytest.fixture
def live_server(app, _servers):
    """One server per database for the whole session: every test empties the database and
    Redis, so what a test sees is its own, and the server start is paid once."""
    key = app.config["SQLALCHEMY_DATABASE_URI"]
    server = _servers.get(key)
    if server is None or server.proc.poll() is not None:
        server = _servers[key] = Server(app).start()
    return server
