"""Error classes every connector and the shared HTTP client raise.

The engine decides what to do with a run purely from the class (webapp/retry_policy.py), so a connector
never needs its own retry logic.
"""


class SyncError(Exception):
    """Base class. `message` must be safe to show (no secrets)."""


class RateLimited(SyncError):
    """HTTP 429 (or a provider's equivalent). `retry_after` seconds, when the provider said."""

    def __init__(self, message, retry_after=None):
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExhausted(RateLimited):
    """The provider asked us to come back later than a worker may wait (a Retry-After or a
    quota reset beyond HTTP_MAX_RETRY_AFTER_SECONDS, a daily quota): the run waits, giving
    its attempt back (webapp/retry_policy.py). `retry_after` is always set."""


class TransientError(SyncError):
    """5xx, timeouts, connection errors: retried with backoff, then the run is retried."""


class AuthError(SyncError):
    """401/403: fail at once and mark the connection needs_reauth. Never retried."""


class ConfigError(SyncError):
    """Settings a person must fix (bad base URL, unknown stream, missing credential)."""


class HttpError(ConfigError):
    """A 4xx other than 401/403/429. `status` lets a connector treat e.g. 404 or 409 itself."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class BadRecord(SyncError):
    """One record is unusable. The engine skips it, logs `key` and the reason, and goes on."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key
