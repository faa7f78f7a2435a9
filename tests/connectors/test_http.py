"""HttpClient against a real local HTTP server: retries, Retry-After, auth and redaction."""
import calendar
import datetime
import email.utils
import math
import time
import traceback
from urllib.parse import parse_qs

import pytest
import requests

from tests.connectors.conftest import free_port
from tests.simulators.harness import RecordsAPI, make_records
from webapp.connectors.errors import AuthError, ConfigError, RateLimited, TransientError
from webapp.connectors.http import (
    BearerAuth,
    HeaderKeyAuth,
    HttpClient,
    HttpError,
    OAuth2ClientCredentials,
    parse_json,
    parse_retry_after,
    redact_url,
)
from webapp.connectors.ratelimit import LocalRateLimiter


def recording_sleep(sleeps):
    """The real sleep, with every wait noted so a test can see what the client chose."""

    def sleep(seconds):
        sleeps.append(seconds)
        time.sleep(seconds)

    return sleep


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def full_text(exc):
    """Every message a logged traceback of `exc` would show (its chain), without source lines."""
    parts = []
    while exc is not None:
        parts.extend(traceback.format_exception_only(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "".join(parts)


@pytest.fixture
def api_server(serve):
    return serve(RecordsAPI(make_records(3)))


# -- 429 and Retry-After -------------------------------------------------------------------


def test_429_retry_after_seconds_is_waited_out(api_server):
    api_server.faults.rate_limit(retry_after=1)
    sleeps = []
    client = HttpClient(api_server.url, sleep=recording_sleep(sleeps), backoff_base=0.01)

    body = client.get_json("/items")

    assert [r["id"] for r in body["items"]] == [1, 2, 3]
    first, second = api_server.log.entries()
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 1.0
    assert 0.9 <= sum(sleeps) <= 1.1  # the named wait, not a backoff guess


def test_429_retry_after_http_date_is_honoured(api_server):
    until = time.time() + 2
    http_date = email.utils.formatdate(until, usegmt=True)  # whole seconds: floor(until)
    api_server.faults.rate_limit(retry_after=http_date)
    client = HttpClient(api_server.url, backoff_base=0.01)

    client.get_json("/items")

    first, second = api_server.log.entries()
    assert first.status == 429
    assert second.wall >= calendar.timegm(email.utils.parsedate(http_date))


def test_parse_retry_after_forms():
    now = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert parse_retry_after("7", now=now) == 7
    assert parse_retry_after(" 2.5 ", now=now) == 2.5
    assert parse_retry_after("Tue, 01 Jan 2030 00:00:30 GMT", now=now) == 30
    assert parse_retry_after("2030-01-01T00:01:00Z", now=now) == 60  # Zoom's daily-limit form
    assert parse_retry_after("2030-01-01T00:01:00+01:00", now=now) == 0  # already past
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None


def test_retry_after_longer_than_allowed_raises_rate_limited_without_waiting(api_server):
    api_server.faults.rate_limit(retry_after=600)
    sleeps = []
    client = HttpClient(api_server.url, max_retry_after=300, sleep=recording_sleep(sleeps))

    with pytest.raises(RateLimited) as info:
        client.get_json("/items")

    assert info.value.retry_after == 600
    assert len(api_server.log) == 1
    assert sleeps == []


def test_429_without_retry_after_backs_off_and_is_bounded(api_server):
    api_server.faults.rate_limit(retry_after=None, times=50)
    sleeps = []
    client = HttpClient(api_server.url, max_retries=2, backoff_base=0.01, backoff_max=0.02,
                        sleep=recording_sleep(sleeps))

    with pytest.raises(RateLimited) as info:
        client.get_json("/items")

    assert info.value.retry_after is None
    assert len(api_server.log) == 1 + 2 * 2  # 429 retries are bounded at twice max_retries
    assert len(sleeps) == 4 and all(0 <= s <= 0.02 for s in sleeps)


# -- transient errors ------------------------------------------------------------------------


def test_503_burst_is_retried_with_full_jitter_then_succeeds(api_server):
    api_server.faults.status(503, times=3)
    sleeps = []
    client = HttpClient(api_server.url, max_retries=5, backoff_base=0.01, backoff_max=0.03,
                        sleep=recording_sleep(sleeps))

    body = client.get_json("/items")

    assert len(body["items"]) == 3
    assert [e.status for e in api_server.log.entries()] == [503, 503, 503, 200]
    caps = [min(0.03, 0.01 * 2 ** n) for n in range(3)]
    assert len(sleeps) == 3 and all(0 <= s <= cap for s, cap in zip(sleeps, caps))


def test_transient_retries_are_bounded_then_transient_error(api_server):
    api_server.faults.status(500, times=100)
    client = HttpClient(api_server.url, max_retries=3, backoff_base=0.001)

    with pytest.raises(TransientError) as info:
        client.get_json("/items")

    assert "HTTP 500" in str(info.value)
    assert len(api_server.log) == 4  # the first try and three retries


def test_timeouts_are_retried(api_server):
    api_server.faults.delay(5.0, times=2)
    client = HttpClient(api_server.url, timeout=1.0, backoff_base=0.01)

    started = time.monotonic()
    body = client.get_json("/items")

    assert len(body["items"]) == 3
    assert [e.fault for e in api_server.log.entries()] == ["delay", "delay", None]
    assert time.monotonic() - started < 5.0  # it gave up on the slow answers, did not wait them out


def test_timeouts_exhausted_raise_transient_error(api_server):
    api_server.faults.delay(1.0, times=5)
    client = HttpClient(api_server.url, timeout=0.1, max_retries=1, backoff_base=0.01)

    with pytest.raises(TransientError, match="timed out"):
        client.get_json("/items")
    assert len(api_server.log) == 2


def test_dropped_connections_are_retried(api_server):
    api_server.faults.drop_connection(times=2)
    client = HttpClient(api_server.url, backoff_base=0.01)

    assert len(client.get_json("/items")["items"]) == 3
    assert [e.fault for e in api_server.log.entries()] == ["drop", "drop", None]


def test_connection_refused_is_transient():
    client = HttpClient(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_base=0.001)
    with pytest.raises(TransientError, match="connection failed"):
        client.get_json("/items")


def test_invalid_json_on_success_is_transient(api_server):
    api_server.faults.status(200, body='{"items": [{"id": 1}, {"id"')
    client = HttpClient(api_server.url)

    with pytest.raises(TransientError, match="not valid JSON"):
        client.get_json("/items")


def test_rate_limiter_is_acquired_before_every_attempt_including_retries(api_server):
    class RecordingLimiter(LocalRateLimiter):
        def acquire(self):
            self.admitted.append(super().acquire())
            return self.admitted[-1]

    api_server.faults.status(503, times=3)
    limiter = RecordingLimiter(2, 0.5)
    limiter.admitted = []
    client = HttpClient(api_server.url, backoff_base=0.001, rate_limiter=limiter)

    client.get_json("/items")

    assert len(api_server.log.entries()) == 4 and len(limiter.admitted) == 4  # one admission per request sent
    # Two per half second: each request is admitted at least 0.5 s after the one two before
    # it (a lower bound a slow machine can only widen).
    assert all(limiter.admitted[i + 2] - limiter.admitted[i] >= 0.4999 for i in range(2))


# -- 4xx --------------------------------------------------------------------------------


def test_401_is_an_auth_error_without_retry(serve):
    server = serve(RecordsAPI(make_records(3), auth_token="the-right-token"))
    client = HttpClient(server.url, auth=BearerAuth("a-wrong-token"), backoff_base=0.001)

    with pytest.raises(AuthError) as info:
        client.get_json("/items")

    assert len(server.log) == 1
    assert "401" in str(info.value)
    assert "a-wrong-token" not in full_text(info.value)


def test_403_is_an_auth_error_without_retry(api_server):
    api_server.faults.status(403, body={"message": "forbidden"})
    client = HttpClient(api_server.url, auth=BearerAuth("some-token"))

    with pytest.raises(AuthError):
        client.get_json("/items")
    assert len(api_server.log) == 1


def test_other_4xx_is_a_config_error_with_status(api_server):
    client = HttpClient(api_server.url)

    with pytest.raises(ConfigError) as info:
        client.get_json("/no-such-path")

    assert isinstance(info.value, HttpError) and info.value.status == 404
    assert "HTTP 404" in str(info.value) and "/no-such-path" in str(info.value)
    assert len(api_server.log) == 1


# -- secrets never leak ------------------------------------------------------------------------


def test_provider_error_text_echoing_the_key_is_scrubbed(api_server):
    api_server.faults.status(400, body={"message": "key sk-live-SECRET123 is malformed"})
    client = HttpClient(api_server.url, auth=HeaderKeyAuth("X-API-Key", "sk-live-SECRET123"))

    with pytest.raises(ConfigError) as info:
        client.get_json("/items")

    assert "sk-live-SECRET123" not in full_text(info.value)
    assert "[redacted] is malformed" in str(info.value)
    assert api_server.log.entries()[0].headers["X-Api-Key"] == "sk-live-SECRET123"  # it was sent


def test_secret_query_values_are_redacted_in_errors(api_server):
    api_server.faults.status(500, times=10)
    client = HttpClient(api_server.url, max_retries=1, backoff_base=0.001)

    with pytest.raises(TransientError) as info:
        client.get_json("/items", params={"api_key": "qs-SECRET-1", "access_token": "qs-SECRET-2", "page": 2})

    text = full_text(info.value)
    assert "qs-SECRET" not in text
    assert "api_key=REDACTED" in str(info.value) and "page=2" in str(info.value)


def test_connection_errors_do_not_leak_the_url_secrets():
    client = HttpClient(f"http://user:pw-SECRET@127.0.0.1:{free_port()}", max_retries=0)
    with pytest.raises(TransientError) as info:
        client.get_json("/items", params={"token": "qs-SECRET"})
    assert "SECRET" not in full_text(info.value)


def test_redact_url():
    assert redact_url("https://u:p@h.example/x?client_secret=s&page=3&sig=abc") == (
        "https://h.example/x?client_secret=REDACTED&page=3&sig=REDACTED"
    )


# -- OAuth2 client credentials ------------------------------------------------------------------


@pytest.fixture
def oauth_server(serve):
    return serve(RecordsAPI(make_records(3), oauth_clients={"cid": "csecret-123"}, token_ttl=3600))


def oauth(server, clock=None, **kwargs):
    return OAuth2ClientCredentials(f"{server.url}/oauth/token", "cid", kwargs.pop("secret", "csecret-123"),
                                   clock=clock or time.monotonic, **kwargs)


def test_oauth2_token_is_cached_and_renewed_before_expiry(oauth_server):
    clock = FakeClock()
    client = HttpClient(oauth_server.url, auth=oauth(oauth_server, clock, expiry_margin=60))

    for _ in range(3):
        client.get_json("/items")
    assert oauth_server.app.token_requests == 1
    token_request = oauth_server.log.entries("/oauth/token")[0]
    assert token_request.headers["Authorization"].startswith("Basic ")  # Zoom style
    assert b"csecret-123" not in token_request.body

    clock.now += 3600 - 60 - 1
    client.get_json("/items")
    assert oauth_server.app.token_requests == 1  # still inside its life, less the margin
    clock.now += 2
    client.get_json("/items")
    assert oauth_server.app.token_requests == 2
    tokens = {e.headers["Authorization"] for e in oauth_server.log.entries("/items")}
    assert len(tokens) == 2


def test_oauth2_form_credentials_and_extra_fields(oauth_server):
    auth = oauth(oauth_server, basic_auth=False, form={"scope": "all"})  # HaloPSA style
    HttpClient(oauth_server.url, auth=auth).get_json("/items")

    token_request = oauth_server.log.entries("/oauth/token")[0]
    form = parse_qs(token_request.body.decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["all"],
                    "client_id": ["cid"], "client_secret": ["csecret-123"]}
    assert "Authorization" not in token_request.headers


def test_oauth2_renews_once_on_401(oauth_server):
    client = HttpClient(oauth_server.url, auth=oauth(oauth_server))
    client.get_json("/items")
    oauth_server.app.revoke_tokens()
    oauth_server.log.clear()

    assert len(client.get_json("/items")["items"]) == 3

    assert [(e.path, e.status) for e in oauth_server.log.entries()] == [
        ("/items", 401), ("/oauth/token", 200), ("/items", 200)]
    assert oauth_server.app.token_requests == 2


def test_oauth2_second_401_is_an_auth_error(oauth_server):
    client = HttpClient(oauth_server.url, auth=oauth(oauth_server), backoff_base=0.001)
    client.get_json("/items")
    oauth_server.app.reject_all_tokens = True
    oauth_server.log.clear()

    with pytest.raises(AuthError) as info:
        client.get_json("/items")

    assert [(e.path, e.status) for e in oauth_server.log.entries()] == [
        ("/items", 401), ("/oauth/token", 200), ("/items", 401)]
    assert "tok-" not in full_text(info.value)


def test_oauth2_refused_client_is_an_auth_error_without_the_secret(oauth_server):
    client = HttpClient(oauth_server.url, auth=oauth(oauth_server, secret="wrong-SECRET-456"))

    with pytest.raises(AuthError) as info:
        client.get_json("/items")

    assert "invalid_client" in str(info.value)
    assert "wrong-SECRET-456" not in full_text(info.value)
    assert oauth_server.log.entries("/items") == []  # never sent without a token


def _response(body, content_type="application/json"):
    resp = requests.Response()
    resp.status_code, resp._content = 200, body
    resp.headers["Content-Type"] = content_type
    resp.encoding = requests.utils.get_encoding_from_headers(resp.headers)
    return resp


def test_json_bodies_read_by_orjson_read_as_requests_reads_them():
    # The fast parser takes UTF-8 bodies; what it refuses, requests' parser still reads.
    assert parse_json(_response(b'{"id": 18446744073709551616, "x": 1.5}')) == {"id": 2**64, "x": 1.5}
    assert math.isnan(parse_json(_response(b'{"v": NaN}'))["v"])
    # A body that is valid UTF-8 but declared as Latin-1 means what its charset says.
    assert parse_json(_response(b'{"n": "\xc3\xa9"}', "application/json; charset=ISO-8859-1")) == {"n": "Ã©"}
    assert parse_json(_response('{"n": "café"}'.encode())) == {"n": "café"}
