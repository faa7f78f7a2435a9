"""A generic JSON REST connector, configured entirely by connection settings.

Settings:
    base_url        "https://api.example.com/v1"
    rate_limit      [requests, seconds] (optional; shared by every worker through Redis)
    rate_limit_key  share one budget between connections of the same account (optional)
    headers         static headers, e.g. {"Version": "2021-07-28"} (optional)
    token_url, token_form, token_basic_auth   OAuth2 client-credentials details (optional)
    streams         {name: {path, records_key, primary_key="id", cursor_field, cursor_param,
                            since_param, until_param, params, record_path, record_key,
                            pagination: {type: page|offset|token|cursor|none, ...}}}

Credentials (one of): {"api_key", "header"} | {"token"} | {"client_id", "client_secret"}
(+ token_url here or in settings) | {"username", "password"} | {} for a public API.
"""
from urllib.parse import quote

from . import pagination
from .auth import BasicAuth, BearerAuth, HeaderKeyAuth, OAuth2ClientCredentials
from .base import Connector, Page, Stream, register
from .errors import ConfigError
from .settings_spec import SettingSpec

_STREAM_KEYS = {
    "path", "records_key", "total_key", "primary_key", "cursor_field", "cursor_param", "since_param",
    "until_param", "params", "record_path", "record_key", "pagination",
}


class _StreamConfig:
    def __init__(self, name, raw):
        if not isinstance(raw, dict):
            raise ConfigError(f"stream {name!r}: settings must be an object")
        unknown = set(raw) - _STREAM_KEYS
        if unknown:
            raise ConfigError(f"stream {name!r}: unknown settings {', '.join(sorted(unknown))}")
        if not raw.get("path"):
            raise ConfigError(f"stream {name!r}: 'path' is required")
        self.stream = Stream(name, primary_key=raw.get("primary_key") or "id", cursor_field=raw.get("cursor_field"))
        self.path = raw["path"]
        self.cursor_param = raw.get("cursor_param")
        self.since_param = raw.get("since_param")
        self.until_param = raw.get("until_param")
        self.params = dict(raw.get("params") or {})
        self.record_path = raw.get("record_path")
        self.record_key = raw.get("record_key")
        paging = dict(raw.get("pagination") or {"type": "none"})
        # The envelope belongs to the stream; pagination settings may still override it.
        paging.setdefault("records_key", raw.get("records_key"))
        paging.setdefault("total_key", raw.get("total_key"))
        self.paginator = pagination.from_settings(paging)


@register
class RestConnector(Connector):
    name = "rest"
    title = "Generic JSON REST API"
    provider = "the API"
    settings_spec = (
        SettingSpec("base_url", "url", None, "the API's base URL", required=True),
        SettingSpec("streams", "json", None, 'stream name -> {"path": ..., "pagination": ...} (docs/CONNECTORS.md)'),
        SettingSpec("headers", "json", None, "extra request headers, a JSON object", advanced=True),
        SettingSpec("rate_limit", "list", None, "[requests, seconds]: at most that many requests per window", advanced=True),
        SettingSpec("rate_limit_key", "string", None, "connections sharing this key share one rate limit", advanced=True),
        SettingSpec("token_url", "url", None, "OAuth2 client-credentials token endpoint", advanced=True),
        SettingSpec("token_form", "json", None, "extra form fields of the token request", advanced=True),
        SettingSpec("token_basic_auth", "bool", True, "send the client id and secret as HTTP Basic", advanced=True),
    )
    credential_fields = ("api_key", "header", "token", "client_id", "client_secret", "username", "password")

    def __init__(self, settings, credentials, services):
        super().__init__(settings, credentials, services)
        base_url = self.settings.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("setting 'base_url' must be an http:// or https:// URL")
        streams = self.settings.get("streams")
        if not isinstance(streams, dict) or not streams:
            raise ConfigError("setting 'streams' must name at least one stream")
        self._configs = {name: _StreamConfig(name, raw) for name, raw in streams.items()}
        # The base class looks streams up on the instance, so the per-connection set works.
        self.streams = tuple(cfg.stream for cfg in self._configs.values())
        self._client = None

    @property
    def client(self):
        if self._client is None:
            rate_limit = self.settings.get("rate_limit")
            self._client = self.services.http(
                self.settings["base_url"],
                auth=self._auth(),
                rate_limit=tuple(rate_limit) if rate_limit else None,
                rate_limit_key=self.settings.get("rate_limit_key"),
                headers=self.settings.get("headers"),
            )
        return self._client

    def _auth(self):
        c = self.credentials
        if c.get("client_id") or c.get("client_secret"):
            return OAuth2ClientCredentials(
                c.get("token_url") or self.settings.get("token_url"),
                c.get("client_id"),
                c.get("client_secret"),
                form=self.settings.get("token_form"),
                basic_auth=self.settings.get("token_basic_auth", True),
            )
        if c.get("api_key"):
            return HeaderKeyAuth(c.get("header") or "X-API-Key", c["api_key"])
        if c.get("token"):
            return BearerAuth(c["token"])
        if c.get("username"):
            return BasicAuth(c["username"], c.get("password"))
        return None

    def read_page(self, stream, request, state):
        cfg = self._configs.get(stream.name)
        if cfg is None:
            self.stream(stream.name)  # raises the ConfigError naming the known streams
        if request.mode == "record":
            return self._read_record(cfg, request)

        params = {**cfg.params, **cfg.paginator.params(state)}
        if request.mode == "incremental" and request.cursor is not None and cfg.cursor_param:
            # Inclusive lower bound: boundary records come again and dedupe by content hash.
            params[cfg.cursor_param] = request.cursor
        elif request.mode == "range":
            params.update(self._range_params(cfg, request.params))
        # Incremental without a cursor (first run) or without a cursor_param is a full listing.

        body = self.client.get_json(cfg.path, params=params)
        records, next_state, total = cfg.paginator.parse(body, state)
        # Records without a usable key are the engine's to set aside (worker/engine.py, _sort).
        return Page(records=records, next_state=next_state, total=total)

    def _range_params(self, cfg, request_params):
        params = {}
        for bound, param in (("since", cfg.since_param), ("until", cfg.until_param)):
            value = request_params.get(bound)
            if value is None:
                continue
            if not param:
                raise ConfigError(f"stream {cfg.stream.name!r} has no {bound}_param; it cannot filter by date")
            params[param] = value
        return params

    def _read_record(self, cfg, request):
        record_id = request.params.get("record_id")
        if not cfg.record_path:
            raise ConfigError(f"stream {cfg.stream.name!r} has no record_path; it cannot fetch one record")
        if record_id in (None, ""):
            raise ConfigError("record mode needs a record_id")
        body = self.client.get_json(cfg.record_path.format(id=quote(str(record_id), safe="")))
        try:
            record = pagination.dig(body, cfg.record_key)
        except KeyError:
            raise ConfigError(f"record response has nothing at {cfg.record_key!r}") from None
        return Page(records=[record], next_state=None, total=1)
