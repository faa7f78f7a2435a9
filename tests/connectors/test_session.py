"""EnvironmentOnceSession: the proxy settings of the environment still apply (with no_proxy),
read once per host rather than on every request."""
import pytest

from tests.connectors.conftest import free_port
from tests.simulators.harness import RecordsAPI, make_records
from webapp.connectors.errors import TransientError
from webapp.connectors.http import HttpClient

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
              "NO_PROXY", "no_proxy")


@pytest.fixture
def api_server(serve):
    return serve(RecordsAPI(make_records(3)))


@pytest.fixture
def clean_proxy_env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_proxy_from_the_environment_is_used(api_server, clean_proxy_env):
    # Nothing listens on the proxy's port: going through it fails, going direct would not.
    clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    with HttpClient(api_server.url, max_retries=0, timeout=5) as client:
        with pytest.raises(TransientError):
            client.get_json("/items")


def test_no_proxy_exempts_a_host(api_server, clean_proxy_env):
    clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    with HttpClient(api_server.url, max_retries=0, timeout=5) as client:
        assert len(client.get_json("/items")["items"]) == 3


def test_the_environment_is_read_once_per_host(api_server, clean_proxy_env):
    with HttpClient(api_server.url, max_retries=0, timeout=5) as client:
        assert len(client.get_json("/items")["items"]) == 3
        # Set after the session first talked to this host: not looked up again.
        clean_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        assert len(client.get_json("/items")["items"]) == 3
    with HttpClient(api_server.url, max_retries=0, timeout=5) as fresh:
        with pytest.raises(TransientError):  # a new session reads it
            fresh.get_json("/items")
