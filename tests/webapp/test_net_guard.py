"""The SSRF guard (webapp/net_guard.py): URLs that reach loopback, private or link-local
addresses are refused when saved and before every request and redirect, unless
SYNCHUB_ALLOW_PRIVATE_URLS lists their network. The tests' environment allows 127.0.0.0/8
and ::1 (tests/support.py), so the simulators work; these tests take that away."""
import ipaddress
import json
import socket

import pytest
import requests
from werkzeug.wrappers import Response

from tests.webapp.admin.support import admin_user, csrf_token, login, new_client  # noqa: F401  (admin_user: a fixture)
from webapp import net_guard
from webapp.connectors.auth import OAuth2ClientCredentials
from webapp.connectors.http import HttpClient

NONE = ()
LOOPBACK_ONLY = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize("url, kind", [
    ("http://127.0.0.1:8080/x", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("https://192.168.0.10/api", "private"),
    ("http://172.16.5.5/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://0.0.0.0:5000/", "private"),  # "this host": Python counts it private
    ("http://100.64.0.1/", "not public"),
])
def test_literal_addresses_that_are_not_public_are_refused_in_a_sentence(url, kind):
    with pytest.raises(net_guard.UnsafeURL) as refused:
        net_guard.check_url(url, allowed=NONE)
    message = str(refused.value)
    assert kind in message and "SYNCHUB_ALLOW_PRIVATE_URLS" in message
    assert "/latest/meta-data" not in message  # the host is named, never the path


def test_public_addresses_pass_and_an_allowed_network_opens_only_itself():
    assert net_guard.check_url("https://93.184.216.34/v2", allowed=NONE)
    allowed = (ipaddress.ip_network("10.20.0.0/16"),)
    assert net_guard.check_url("http://10.20.3.4:8443/halo", allowed=allowed)
    with pytest.raises(net_guard.UnsafeURL):
        net_guard.check_url("http://10.21.0.1/", allowed=allowed)
    with pytest.raises(net_guard.UnsafeURL):  # metadata stays shut unless listed itself
        net_guard.check_url("http://169.254.169.254/", allowed=allowed)


def test_a_host_name_is_judged_by_the_addresses_it_resolves_to():
    with pytest.raises(net_guard.UnsafeURL) as refused:
        net_guard.check_url("http://localhost:9/", allowed=NONE)
    assert "localhost (" in str(refused.value) and "loopback" in str(refused.value)
    assert net_guard.check_url("http://localhost:9/", allowed=LOOPBACK_ONLY)


def test_other_schemes_and_hostless_urls_are_refused():
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "http:///nohost", "ftp://example.com/"):
        with pytest.raises(net_guard.UnsafeURL):
            net_guard.check_url(url, allowed=LOOPBACK_ONLY)


def _redirect_to(location):
    def app(environ, start_response):
        return Response("", 302, {"Location": location})(environ, start_response)

    return app


def test_a_redirect_from_an_allowed_server_to_cloud_metadata_is_not_followed(serve):
    server = serve(_redirect_to("http://169.254.169.254/latest/meta-data/iam/"))
    client = HttpClient(server.url, max_retries=0)
    with pytest.raises(net_guard.UnsafeURL) as refused:
        client.get_json("/items")
    assert "A redirect points to 169.254.169.254" in str(refused.value)
    assert len(server.log.entries()) == 1  # the redirect was asked for once, not retried


def test_a_relative_redirect_is_judged_against_the_server_that_sent_it(serve):
    target = serve(lambda environ, start_response: Response(json.dumps({"ok": 1}), 200,
                                                             content_type="application/json")(environ, start_response))
    server = serve(_redirect_to(target.url + "/landing"))
    assert HttpClient(server.url, max_retries=0).get_json("/items") == {"ok": 1}  # 127.0.0.1 is allowed here


def test_an_oauth_token_url_redirected_inward_is_refused(serve):
    server = serve(_redirect_to("http://10.0.0.7/token"))
    auth = OAuth2ClientCredentials(server.url + "/oauth/token", "id", "secret")
    with pytest.raises(net_guard.UnsafeURL):
        auth.renew()


def test_inside_the_app_the_setting_decides_for_every_request(app, serve):
    server = serve(_redirect_to("http://127.0.0.1:9/"))
    app.config["ALLOW_PRIVATE_URLS"] = NONE
    with pytest.raises(net_guard.UnsafeURL) as refused:
        HttpClient(server.url, max_retries=0).get_json("/items")
    assert "127.0.0.1" in str(refused.value)
    assert server.log.entries() == []  # refused before anything was sent


def test_a_notification_is_not_sent_to_a_private_address(app, serve):
    from webapp.connectors.base import Services
    from webapp.connectors.notify import NotifyConnector

    hits = []

    def receiver(environ, start_response):
        hits.append(environ["PATH_INFO"])
        return Response("ok")(environ, start_response)

    server = serve(receiver)
    action = {"type": "alert.fired", "data": {"text": "[synchub] ALERT test"}}

    def send():
        connector = NotifyConnector({"format": "slack"}, {"url": server.url + "/hook"}, Services(config=dict(app.config)))
        try:
            return connector.send(action, "alert-1-fired.0")
        finally:
            connector.close()

    assert send().startswith("delivered")  # allowed by the tests' setting
    app.config["ALLOW_PRIVATE_URLS"] = NONE
    with pytest.raises(net_guard.UnsafeURL) as refused:
        send()
    assert "127.0.0.1" in str(refused.value) and "/hook" not in str(refused.value)
    assert hits == ["/hook"]


def test_a_connection_form_with_a_metadata_url_is_refused_in_a_sentence(app, admin_user):
    from webapp.extensions import db
    from webapp.models import Connection

    client = new_client(app)
    login(client, admin_user)
    page = client.get("/admin/connections/new?connector=rest")
    form = {"csrf_token": csrf_token(page.get_data(as_text=True)), "name": "meta", "schedule": "manual",
            "setting.base_url": "http://169.254.169.254/latest", "setting.streams": '{"items": {"path": "/x"}}'}
    response = client.post("/admin/connections/new?connector=rest", data=form)
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert "The setting &#39;base_url&#39; points to 169.254.169.254, a link-local address" in text
    assert db.session.query(Connection).count() == 0
    # A host name resolving to loopback, once loopback is no longer allowed.
    app.config["ALLOW_PRIVATE_URLS"] = NONE
    form["setting.base_url"] = "http://localhost:8080/api"
    response = client.post("/admin/connections/new?connector=rest", data=form)
    assert response.status_code == 400 and "loopback" in response.get_data(as_text=True)
    # A URL nested among the other settings is found too.
    form["setting.base_url"], form["extra_settings"] = "https://93.184.216.34/api", '{"notify": {"callback_url": "http://10.0.0.5/t"}}'
    response = client.post("/admin/connections/new?connector=rest", data=form)
    assert response.status_code == 400 and "callback_url" in response.get_data(as_text=True)
    app.config["ALLOW_PRIVATE_URLS"] = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client.post("/admin/connections/new?connector=rest", data=form).status_code == 302
    assert db.session.query(Connection).count() == 1


def test_the_cli_refuses_a_private_url_in_a_sentence(app):
    app.config["ALLOW_PRIVATE_URLS"] = NONE
    result = app.test_cli_runner().invoke(args=[
        "connections", "add", "inner", "--connector", "rest", "--setting", "base_url=http://192.168.1.20/api"])
    assert result.exit_code == 1
    assert "points to 192.168.1.20, a private address" in result.output
    assert "Traceback" not in result.output


def test_requests_alone_would_have_followed_the_redirect(serve):
    """The control: the refusal above is the guard's doing, not requests' default."""
    target = serve(lambda environ, start_response: Response("inner")(environ, start_response))
    server = serve(_redirect_to(target.url + "/secret"))
    assert requests.get(server.url, timeout=5).text == "inner"


def _rebinding_resolver(monkeypatch, name):
    """socket.getaddrinfo answering `name` as a rebinding DNS server would: a public address
    the first time (the guard's own lookup), 127.0.0.1 after (the connection's). Every other
    name resolves as usual."""
    real = socket.getaddrinfo
    lookups = []

    def resolve(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return real("93.184.216.34" if len(lookups) == 1 else "127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    net_guard._cache.clear()
    return lookups


def _json_ok(environ, start_response):
    return Response(json.dumps({"ok": 1}), 200, content_type="application/json")(environ, start_response)


def test_a_name_rebound_to_loopback_after_the_check_is_refused_at_connect(app, serve, monkeypatch):
    server = serve(_json_ok)
    port = server.url.rsplit(":", 1)[1]
    app.config["ALLOW_PRIVATE_URLS"] = NONE
    lookups = _rebinding_resolver(monkeypatch, "rebind.example")
    with pytest.raises(net_guard.UnsafeURL) as refused:
        HttpClient(f"http://rebind.example:{port}", max_retries=0).get_json("/items")
    assert "The connection to rebind.example (127.0.0.1), a loopback address" in str(refused.value)
    assert lookups == ["rebind.example", "rebind.example"]  # the check by name saw the public answer
    assert server.log.entries() == []  # nothing was sent on the connection


def test_without_the_connect_check_the_rebound_name_would_have_got_through(app, serve, monkeypatch):
    """The control: a plain requests session passed in passes the checks by name and reaches
    127.0.0.1, so the refusal above is the connect check's."""
    server = serve(_json_ok)
    port = server.url.rsplit(":", 1)[1]
    app.config["ALLOW_PRIVATE_URLS"] = NONE
    _rebinding_resolver(monkeypatch, "rebind.example")
    client = HttpClient(f"http://rebind.example:{port}", max_retries=0, session=requests.Session())
    assert client.get_json("/items") == {"ok": 1}
    assert len(server.log.entries()) == 1
