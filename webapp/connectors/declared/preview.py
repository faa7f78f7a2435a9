"""Services for `flask connectors preview`: the real HTTP client (real requests, rate limits
in this process), every response echoed, and nothing persisted. A token the provider rotates
is kept in memory only: the preview says so, since the stored one may now be spent."""
import requests

from ..base import Services
from ..http import redact_url


class PreviewServices(Services):
    def __init__(self, config, echo, credentials=None):
        super().__init__(config=config, redis=None, connection_id="preview")
        self._echo = echo
        self._credentials = dict(credentials or {})
        self._settings = {}

    def http(self, base_url, **options):
        session = requests.Session()
        session.hooks["response"].append(self._record)
        return super().http(base_url, session=session, **options)

    def _record(self, resp, *args, **kwargs):
        self._echo(f"{resp.request.method} {redact_url(resp.url)} -> HTTP {resp.status_code} ({len(resp.content)} bytes)")

    def update_credentials(self, mutate):
        changes = mutate(dict(self._credentials)) or {}
        if changes:
            self._echo("the provider issued new tokens; preview keeps them in memory only (reconnect the app if "
                       "the stored refresh token is now spent)")
        self._credentials.update(changes)
        return dict(self._credentials)

    def update_settings(self, mutate):
        self._settings.update(mutate(dict(self._settings)) or {})
        return dict(self._settings)
