"""The HTTP session every HttpClient opens: requests.Session, with the environment read once
per host instead of on every request.

requests reads the proxy variables (and `no_proxy`), the CA bundle variables and ~/.netrc
for every request it sends (`trust_env`): on the outbox's hot path that was about a tenth of
a delivery's CPU (docs/PERFORMANCE.md, "Outbox delivery"). Here the same settings are
looked up the first time a session talks to a scheme and host, and kept for the session's
life (a worker's drain or sync), with the same precedence requests gives them: a request's
own proxies and `verify` first, then the environment's, then the session's.
"""
import os
from urllib.parse import urlsplit

import requests
from requests.utils import get_environ_proxies, get_netrc_auth


class EnvironmentOnceSession(requests.Session):
    def __init__(self):
        super().__init__()
        self.trust_env = False  # the lookups below replace requests' per-request ones
        self._environment = {}  # (scheme, host) -> (proxies, CA bundle or None, netrc auth or None)

    def _from_environment(self, url):
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._environment.get(key)
        if found is None:
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            found = self._environment[key] = (get_environ_proxies(url), bundle, get_netrc_auth(url))
        return found

    def prepare_request(self, request):
        if request.auth is None and self.auth is None:
            request.auth = self._from_environment(request.url)[2]
        return super().prepare_request(request)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        env_proxies, bundle, _netrc = self._from_environment(url)
        proxies = {**env_proxies, **(proxies or {})}
        if verify is True or verify is None:
            verify = bundle or verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)
