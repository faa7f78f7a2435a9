"""The one HTTP client every connector uses: pooled session, auth, rate limit, retries.

Responses are classified once, here, into the error classes of webapp/connectors/errors.py,
so connectors never retry on their own; when and how often a call is retried is
webapp/retry_policy.py's ("request"):

- 429: RateLimited; Retry-After (seconds or a date; backoff when absent) is waited out in
  the call unless it is longer than `max_retry_after`.
- 5xx, 408, timeouts, connection errors: TransientError, retried with backoff.
- 401/403: AuthError without retry, except one token renewal on a 401 when the auth
  strategy can renew (OAuth2 client credentials).
- Any other 4xx: HttpError (a ConfigError) carrying the status.

Messages never carry credentials: no headers, query values with secret-looking names are
redacted, and the auth strategy's secrets are scrubbed from provider error texts.
"""
import datetime
import email.utils
import functools
import logging
import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import requests
import tenacity

from .. import metrics, net_guard, rate_limit_waits, retry_policy
from ..error_words import describe

from .auth import BasicAuth, BearerAuth, HeaderKeyAuth, OAuth2ClientCredentials  # noqa: F401 (re-export)
from .errors import AuthError, ConfigError, HttpError, QuotaExhausted, RateLimited, TransientError
from .ratelimit import remaining_in_window
from .session import EnvironmentOnceSession

log = logging.getLogger(__name__)

# A worker runs one sync at a time, but a connector may fetch detail pages from a few threads.
POOL_SIZE = 10

_SENSITIVE_PARAM = re.compile(r"key|token|secret|passw|signature|sig$|auth|credential|session", re.I)


class _Retry(Exception):
    """Internal: an attempt failed in a way the retry loop handles."""


class _TransientRetry(_Retry):
    def give_up(self):
        return TransientError(str(self))


class _RateLimitedRetry(_Retry):
    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after

    def give_up(self):
        return RateLimited(str(self), retry_after=self.retry_after)


class _Call:
    """Bookkeeping of one request() across its attempts."""

    def __init__(self):
        self.failures = 0  # transient failures so far
        self.rate_limited = 0  # 429s so far
        self.not_before = None  # monotonic time Retry-After named
        self.renewed = False  # the one token renewal a 401 may trigger


class HttpClient:
    def __init__(
        self,
        base_url,
        *,
        auth=None,
        rate_limiter=None,
        timeout=30,
        max_retries=5,
        backoff_base=0.5,
        backoff_max=30,
        max_retry_after=300,
        session=None,
        sleep=time.sleep,
        clock=time.monotonic,
        headers=None,
        retry_after_header="Retry-After",
        quota_headers=True,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("base URL must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._host = urlsplit(self.base_url).netloc.rsplit("@", 1)[-1]  # metrics label, no userinfo
        self.auth = auth
        self.rate_limiter = rate_limiter
        # Feed the provider's remaining-quota header to the shared limiter (ratelimit.py):
        # off only to measure what it saves (bench/quota_headers.py).
        self.quota_headers = quota_headers
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._clock = clock
        self._headers = {"Accept": "application/json", **(headers or {})}
        # A few providers name it otherwise (X-RateLimit-Reset-After...); declared connectors say.
        self.retry_after_header = retry_after_header
        self._owns_session = session is None
        if session is None:
            # Retries are ours (classified, rate limited); urllib3 must not add its own.
            session = net_guard.session(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0,
                                        base=EnvironmentOnceSession)
        self._session = session

    def close(self):
        if self._owns_session:
            self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- public API ------------------------------------------------------------------

    def request(self, method, path, *, params=None, json=None, data=None, headers=None):
        """Send with retries; return a response with a status below 400 or raise SyncError."""
        url = self._url(path)
        call = _Call()
        attempt = self._attempt
        if self.max_retries:
            # With none allowed, retry_policy.request_gives_up stops after the first failure:
            # the attempt alone then, without building a retry loop per request (the outbox).
            attempt = functools.partial(tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_Retry),
                stop=lambda state: self._stop(call, state),
                wait=lambda state: self._wait(call, state),
                sleep=self._sleep,
                before_sleep=functools.partial(_log_retry, self._host),
                reraise=True,
            ), self._attempt)
        try:
            return attempt(call, method, url, params, json, data, headers)
        except _Retry as exc:
            raise exc.give_up() from None

    def get_json(self, path, params=None, headers=None):
        return parse_json(self.request("GET", path, params=params, headers=headers))

    # -- the retry loop's parts ----------------------------------------------------------

    def _stop(self, call, retry_state):
        return retry_policy.request_gives_up(rate_limited=call.rate_limited, failures=call.failures,
                                             max_retries=self.max_retries)

    def _wait(self, call, retry_state):
        exc = retry_state.outcome.exception()
        if isinstance(exc, _RateLimitedRetry):
            if exc.retry_after is not None:
                return max(0.0, call.not_before - self._clock())
            return self._backoff(call.rate_limited)
        return self._backoff(call.failures)

    def _backoff(self, n):
        return retry_policy.request_backoff(n, self.backoff_base, self.backoff_max)

    def _attempt(self, call, method, url, params, json, data, extra_headers):
        # Belt and braces: whatever sleep did, never send before the time Retry-After named.
        if call.not_before is not None:
            remaining = call.not_before - self._clock()
            if remaining > 0:
                self._sleep(remaining)
        while True:
            resp = self._send(call, method, url, params, json, data, extra_headers)
            if resp.status_code < 400:
                return resp
            if resp.status_code == 401 and not call.renewed and self.auth is not None:
                if self._renew(call, method, url):
                    call.renewed = True
                    resp.close()
                    continue
            self._raise_for(call, method, resp)

    def _renew(self, call, method, url):
        try:
            return self.auth.renew()
        except TransientError as exc:
            call.failures += 1
            raise _TransientRetry(f"{method} {redact_url(url)}: {exc}") from None

    def _send(self, call, method, url, params, json, data, extra_headers):
        where = f"{method} {redact_url(url)}"
        if self.rate_limiter is not None:
            waited = time.monotonic()
            self.rate_limiter.acquire()
            waited = time.monotonic() - waited
            if waited > 0.001:
                rate_limit_waits.waited(waited, self._host)
        headers = {**self._headers, **(extra_headers or {})}
        if self.auth is not None:
            try:
                self.auth.apply(headers)
            except TransientError as exc:  # token endpoint down: same policy as the API
                call.failures += 1
                raise _TransientRetry(f"{where}: {exc}") from None
        hooks = net_guard.guard(url, what=where)  # SSRF: this URL and every redirect's
        # A request's hooks replace its session's in requests: keep the session's too (the
        # connector preview records every response with one).
        hooks["response"] = [*self._session.hooks.get("response", []), *hooks["response"]]
        try:
            resp = self._session.request(
                method, url, params=params, json=json, data=data, headers=headers, timeout=self.timeout,
                hooks=hooks,
            )
            metrics.inc("provider_requests", host=self._host, status=resp.status_code)
            if self.rate_limiter is not None and self.quota_headers:
                remaining = remaining_in_window(resp.headers)
                if remaining is not None:
                    self.rate_limiter.observe_remaining(remaining)
            return resp
        except requests.Timeout as exc:
            metrics.inc("provider_requests", host=self._host, status="timeout")
            call.failures += 1
            raise _TransientRetry(f"{where}: timed out after {self.timeout}s ({describe(exc)})") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            metrics.inc("provider_requests", host=self._host, status="connection_error")
            call.failures += 1
            raise _TransientRetry(f"{where}: connection failed ({describe(exc)})") from None
        except requests.RequestException as exc:
            # Invalid URL, bad header value...: retrying cannot help. The exception text may
            # hold the full URL, so only its class is shown.
            raise ConfigError(f"{where}: request could not be sent ({describe(exc)})") from None

    def _raise_for(self, call, method, resp):
        status = resp.status_code
        where = f"{method} {redact_url(resp.url)}"
        reason = self._reason(resp)
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get(self.retry_after_header))
            message = f"{where}: rate limited (HTTP 429)"
            if not retry_policy.request_waits_out(retry_after, self.max_retry_after):
                raise QuotaExhausted(f"{message}, Retry-After {retry_after:.0f}s is too long to wait",
                                     retry_after=retry_after)
            call.rate_limited += 1
            if retry_after is not None:
                call.not_before = self._clock() + retry_after
            raise _RateLimitedRetry(message, retry_after)
        if status in (401, 403):
            raise AuthError(f"{where}: HTTP {status} {reason}; credentials rejected")
        if status >= 500 or status == 408:
            call.failures += 1
            raise _TransientRetry(f"{where}: HTTP {status} {reason}")
        raise HttpError(f"{where}: HTTP {status} {reason}", status)

    def _reason(self, resp):
        """A short reason: the provider's error message if it has one, else the status text."""
        text = None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            for field in ("message", "error_description", "error", "detail", "title"):
                if isinstance(body.get(field), str) and body[field]:
                    text = body[field]
                    break
        text = text or resp.reason or ""
        return self._scrub(text)[:200]

    def _scrub(self, text):
        secrets = self.auth.secrets() if self.auth is not None and hasattr(self.auth, "secrets") else []
        for secret in secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text

    def _url(self, path):
        if path.startswith(("http://", "https://")):  # next-page links some APIs return
            return path
        return f"{self.base_url}/{path.lstrip('/')}"


def _log_retry(host, retry_state):
    # The message was built to be safe (redacted URL, scrubbed reason), so it may be logged.
    exc = retry_state.outcome.exception()
    log.info("%s; retry in %.2fs", exc, retry_state.upcoming_sleep)
    reason = "rate_limited" if isinstance(exc, _RateLimitedRetry) else "transient"
    metrics.inc("provider_retries", host=host, reason=reason)
    if reason == "rate_limited" and retry_state.upcoming_sleep:
        rate_limit_waits.waited(retry_state.upcoming_sleep, host)


def parse_json(resp):
    """The JSON body of a successful response; None for 204/empty."""
    if resp.status_code == 204 or not resp.content:
        return None
    # orjson parses a page several times faster than the standard library, which the
    # engine's fetch stage feels (docs/PERFORMANCE.md, "Engine throughput"). Only UTF-8
    # bodies (what requests would decode as such); whatever orjson refuses (integers beyond
    # 64 bits, NaN, another charset) goes to requests' own parser, so nothing is read
    # differently.
    if (resp.encoding or "utf-8").lower().replace("_", "-") in ("utf-8", "utf8"):
        try:
            return orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            pass
    try:
        return resp.json()
    except ValueError:
        # A 2xx that is not JSON is nearly always a truncated body or a proxy's error page.
        raise TransientError(
            f"{resp.request.method} {redact_url(resp.url)}: HTTP {resp.status_code} body is not valid JSON "
            f"({len(resp.content)} bytes, truncated or not JSON)"
        ) from None


def parse_retry_after(value, now=None):
    """Seconds to wait from a Retry-After value: delay-seconds, an HTTP-date or an ISO date.

    None when absent or unreadable (the caller then backs off exponentially).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    when = None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:  # HTTP-dates are GMT; an ISO date without zone is taken as UTC
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def redact_url(url):
    """The URL without user info and with secret-looking query values replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]  # drop user:password@
    query = [
        (name, "REDACTED" if _SENSITIVE_PARAM.search(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe=":,"), ""))
