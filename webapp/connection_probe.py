"""Test connection: authenticate and read the first page of each stream, and say what came
back (how many records, the first record's keys) or the provider's error in words. Nothing
is stored: no run, no records, no cursor; only what the provider itself rotates (a refresh
token) is kept, as a sync would.
"""
from dataclasses import dataclass, field

from flask import current_app

from .connectors import connector_class
from .connectors.base import ReadRequest, Services
from .connectors.errors import AuthError, ConfigError, HttpError, RateLimited, SyncError, TransientError
from .error_words import describe
from .extensions import redis_ext

KEYS_SHOWN = 20
# A person is waiting: one retry of a failing request, and a shorter timeout than a run's.
PROBE_RETRIES = 1
PROBE_TIMEOUT_SECONDS = 15.0


@dataclass
class StreamResult:
    stream: str
    ok: bool
    count: int = 0
    total: int | None = None
    keys: list = field(default_factory=list)
    message: str = ""


@dataclass
class ProbeResult:
    ok: bool
    message: str
    streams: list = field(default_factory=list)


def in_words(exc):
    """What a failed request means, for the person who pressed Test connection."""
    if isinstance(exc, AuthError):
        return f"The provider refused the credentials: {exc}"
    if isinstance(exc, RateLimited):
        return f"The provider is rate limiting us; try again in a minute: {exc}"
    if isinstance(exc, HttpError):
        return f"The provider refused the request: {exc}"
    if isinstance(exc, ConfigError):
        return f"A setting or credential needs fixing: {exc}"
    if isinstance(exc, TransientError):
        return f"The provider could not be reached or answered with an error: {exc}"
    if isinstance(exc, SyncError):
        return str(exc)
    return f"The test stopped on an unexpected error ({describe(exc)}); the web log has the details."


def probe(connection):
    """A ProbeResult for a stored connection. Never raises for what the provider answers."""
    try:
        cls = connector_class(connection.connector)
        config = dict(current_app.config, HTTP_MAX_RETRIES=PROBE_RETRIES,
                      HTTP_TIMEOUT_SECONDS=min(PROBE_TIMEOUT_SECONDS, current_app.config["HTTP_TIMEOUT_SECONDS"]))
        services = Services(config=config, redis=redis_ext.optional(), connection_id=connection.id)
        connector = cls(connection.settings or {}, connection.credentials, services)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, in words
        _log_unexpected(connection, exc)
        return ProbeResult(False, in_words(exc))
    if "full" not in cls.supported_modes or not connector.streams:
        return ProbeResult(True, f"{cls.title or cls.name} has no streams to read; the settings were accepted.")
    results = [_read_first_page(connection, connector, stream) for stream in connector.streams
               if not stream.derived_from]
    failed = [r for r in results if not r.ok]
    if not failed:
        return ProbeResult(True, "Connected: every stream answered.", results)
    return ProbeResult(False, failed[0].message, results)


def _read_first_page(connection, connector, stream):
    try:
        page = connector.read_page(stream, ReadRequest(mode="full"), None)
    except Exception as exc:  # noqa: BLE001
        _log_unexpected(connection, exc)
        return StreamResult(stream.name, False, message=in_words(exc))
    first = next((r for r in page.records if isinstance(r, dict)), None)
    return StreamResult(stream.name, True, count=len(page.records), total=page.total,
                        keys=sorted(first)[:KEYS_SHOWN] if first else [])


def _log_unexpected(connection, exc):
    if not isinstance(exc, SyncError):
        current_app.logger.exception("test of connection %s: unexpected error", connection.id)
