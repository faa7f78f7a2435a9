"""The provider-facing endpoint's own code: the header read that skips werkzeug's EnvironHeaders."""
from werkzeug.datastructures import EnvironHeaders
from werkzeug.test import EnvironBuilder

from webapp.webhooks.routes import read_headers


def test_read_headers_gives_what_werkzeug_gives_with_lower_cased_names():
    environ = EnvironBuilder(method="POST", path="/webhooks/shop", data=b"{}", headers={
        "Content-Type": "application/json; charset=utf-8", "webhook-id": "msg_1", "X-Zm-Signature": "v0=abc",
        "X-Forwarded-For": "10.0.0.1", "Authorization": "Basic aGFsbzpwdw=="}).get_environ()
    werkzeug = {name.lower(): value for name, value in EnvironHeaders(environ).items()}
    assert read_headers(environ) == werkzeug
    assert read_headers(environ)["x-zm-signature"] == "v0=abc" and read_headers(environ)["content-length"] == "2"
