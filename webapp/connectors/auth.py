"""Auth strategies for HttpClient.

Each strategy puts its credential on a request with `apply(headers)`. `renew()` fetches a
fresh credential and returns True when the strategy can do that (OAuth2 client
credentials); static credentials return False, so the client turns a 401 into AuthError at
once. `secrets()` lists the values that must never appear in an error message.
"""
import base64
import threading
import time

import requests

from .. import net_guard
from ..logs import register_secret
from ..error_words import describe
from .errors import AuthError, ConfigError, RateLimited, TransientError


class HeaderKeyAuth:
    """A static key in a header of the provider's choosing (e.g. X-API-Key)."""

    def __init__(self, header, value):
        if not header or not value:
            raise ConfigError("API key auth needs a header name and a key")
        self.header = header
        self._value = value

    def apply(self, headers):
        headers[self.header] = self._value

    def renew(self):
        return False

    def secrets(self):
        return [self._value]


class BearerAuth:
    """A static token sent as `Authorization: Bearer <token>`."""

    def __init__(self, token):
        if not token:
            raise ConfigError("bearer auth needs a token")
        self._token = token

    def apply(self, headers):
        headers["Authorization"] = f"Bearer {self._token}"

    def renew(self):
        return False

    def secrets(self):
        return [self._token]


class BasicAuth:
    def __init__(self, user, password):
        if user is None or password is None:
            raise ConfigError("basic auth needs a user and a password")
        self._user = user
        self._password = password
        self._header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def apply(self, headers):
        headers["Authorization"] = self._header

    def renew(self):
        return False

    def secrets(self):
        return [self._password, self._header.split(" ", 1)[1]]


class OAuth2ClientCredentials:
    """OAuth2 client-credentials grant (Zoom Server-to-Server, HaloPSA).

    Neither provider issues refresh tokens: a new token is requested shortly before the
    cached one expires, and once more when the API answers 401 (revoked or expired early).
    Thread-safe, so one instance can serve the threads of a worker.
    """

    def __init__(
        self,
        token_url,
        client_id,
        client_secret,
        *,
        form=None,
        basic_auth=True,
        expiry_margin=60,
        session=None,
        timeout=30,
        clock=time.monotonic,
    ):
        if not token_url or not client_id or not client_secret:
            raise ConfigError("OAuth2 client credentials need token_url, client_id and client_secret")
        if not token_url.startswith(("http://", "https://")):
            raise ConfigError("OAuth2 token_url must start with http:// or https://")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        # Zoom sends grant_type=account_credentials&account_id=...; HaloPSA adds scope=all.
        self.form = {"grant_type": "client_credentials", **(form or {})}
        self.basic_auth = basic_auth
        self.expiry_margin = expiry_margin
        self.timeout = timeout
        self._session = session or net_guard.session()
        self._clock = clock
        self._lock = threading.Lock()
        self._token = None
        self._expires_at = None  # None with a token: the endpoint gave no lifetime

    def apply(self, headers):
        headers["Authorization"] = f"Bearer {self._current_token()}"

    def renew(self):
        with self._lock:
            self._fetch()
        return True

    def secrets(self):
        return [s for s in (self._client_secret, self._token) if s]

    def _current_token(self):
        with self._lock:
            expired = self._expires_at is not None and self._clock() >= self._expires_at
            if self._token is None or expired:
                self._fetch()
            return self._token

    def _fetch(self):
        data = dict(self.form)
        auth = None
        if self.basic_auth:
            auth = (self.client_id, self._client_secret)
        else:
            data.update(client_id=self.client_id, client_secret=self._client_secret)
        body = _token_request(self._session, self.token_url, data, auth, self.timeout,
                              refused="refused the client credentials")
        token = body["access_token"]
        if not isinstance(token, str) or not token:
            raise ConfigError("OAuth2 token endpoint answered an empty access_token")
        self._token = token
        register_secret(token)  # masked in every log line of this process from now on
        self._expires_at = None
        expires_in = body.get("expires_in")
        try:
            expires_in = float(expires_in) if expires_in is not None else None
        except (TypeError, ValueError):
            expires_in = None
        if expires_in is not None:
            # Renew ahead of expiry so a request never leaves with a token about to lapse;
            # a short-lived token keeps at least half its life.
            margin = min(self.expiry_margin, expires_in / 2)
            self._expires_at = self._clock() + expires_in - margin


def _token_request(session, url, data, auth, timeout, *, refused, hint=""):
    """POST to a token endpoint; the JSON body with an access_token, or the classified error."""
    try:
        resp = session.post(url, data=data, auth=auth, timeout=timeout, headers={"Accept": "application/json"},
                            hooks=net_guard.guard(url, what="The OAuth2 token_url"))
    except requests.Timeout:
        raise TransientError("OAuth2 token endpoint timed out") from None
    except requests.RequestException as exc:
        raise TransientError(f"OAuth2 token endpoint unreachable ({describe(exc)})") from None
    status = resp.status_code
    if status in (400, 401, 403):
        raise AuthError(f"OAuth2 token endpoint {refused} (HTTP {status}{_oauth_error(resp)}){hint}")
    if status == 429:
        raise RateLimited("OAuth2 token endpoint rate limited (HTTP 429)")
    if status >= 500:
        raise TransientError(f"OAuth2 token endpoint failed (HTTP {status})")
    if status >= 300:
        raise ConfigError(f"OAuth2 token endpoint answered HTTP {status}; check token_url")
    try:
        body = resp.json()
        body["access_token"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError("OAuth2 token endpoint answered without an access_token; check token_url") from None
    return body


def _oauth_error(resp):
    """The RFC 6749 `error` code (e.g. invalid_client): a fixed vocabulary, safe to show."""
    try:
        code = resp.json().get("error")
    except (ValueError, AttributeError):
        return ""
    if isinstance(code, str) and len(code) <= 40 and code.replace("_", "").isalnum():
        return f", {code}"
    return ""


class OAuth2RefreshToken:
    """OAuth2 with a refresh token the provider rotates on every use (HighLevel).

    The access token, its expiry (epoch seconds) and the refresh token live in the
    connection's encrypted credentials. A renewal happens inside `update_credentials`
    (Services.update_credentials): the connection row is locked, the stored credentials are
    read again, and only if nobody renewed meanwhile is the refresh token spent; the new pair
    is committed before the lock is released. So two workers never spend the same refresh
    token, and a new refresh token is never only in memory.
    """

    def __init__(self, token_url, client_id, client_secret, *, credentials, update_credentials, form=None,
                 expiry_margin=300, session=None, timeout=30, clock=time.time):
        if not token_url or not client_id or not client_secret:
            raise ConfigError("OAuth2 refresh needs token_url, client_id and client_secret")
        if not token_url.startswith(("http://", "https://")):
            raise ConfigError("OAuth2 token_url must start with http:// or https://")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.form = dict(form or {})
        self.expiry_margin = expiry_margin
        self.timeout = timeout
        self._update = update_credentials
        self._session = session or net_guard.session()
        self._clock = clock
        self._lock = threading.Lock()
        self._access = credentials.get("access_token")
        self._expires_at = credentials.get("access_token_expires_at")
        self._refresh = credentials.get("refresh_token")  # only for secrets(): the store is the truth
        if not self._access and not self._refresh:
            raise ConfigError("OAuth2 refresh needs a refresh_token credential (connect the app first)")

    def apply(self, headers):
        with self._lock:
            if not self._fresh(self._access, self._expires_at):
                self._renew(rejected=None)
            headers["Authorization"] = f"Bearer {self._access}"

    def renew(self):
        with self._lock:
            self._renew(rejected=self._access)
        return True

    def secrets(self):
        return [s for s in (self._client_secret, self._access, self._refresh) if s]

    def _fresh(self, access, expires_at):
        if not access:
            return False
        try:
            return expires_at is None or self._clock() < float(expires_at) - self.expiry_margin
        except (TypeError, ValueError):
            return False

    def _renew(self, rejected):
        def mutate(stored):
            access, expires_at = stored.get("access_token"), stored.get("access_token_expires_at")
            if access and access != rejected and access != self._access and self._fresh(access, expires_at):
                return None  # another worker renewed meanwhile: use its token, spend nothing
            refresh = stored.get("refresh_token")
            if not refresh:
                raise AuthError("no refresh token is stored for this connection; connect the app again")
            return self._exchange(refresh)

        stored = self._update(mutate)
        self._access, self._expires_at = stored.get("access_token"), stored.get("access_token_expires_at")
        self._refresh = stored.get("refresh_token")
        if not self._access:
            raise AuthError("the token endpoint gave no access token")

    def _exchange(self, refresh):
        data = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": self.client_id,
                "client_secret": self._client_secret, **self.form}
        body = _token_request(self._session, self.token_url, data, None, self.timeout,
                              refused="refused the refresh token", hint="; connect the app again")
        access = body["access_token"]
        register_secret(access)
        register_secret(body.get("refresh_token"))
        changes = {"access_token": access, "refresh_token": body.get("refresh_token") or refresh,
                   "access_token_expires_at": None}
        try:
            changes["access_token_expires_at"] = self._clock() + float(body["expires_in"])
        except (KeyError, TypeError, ValueError):
            pass
        return changes
