"""The connector interface: what one provider integration has to say, and nothing more.

A connector reads one page at a time. The engine owns the loop, so checkpointing,
cancellation, progress and error handling are the same for every provider: a connector
turns (stream, request, state) into a Page whose `next_state` is the checkpoint to
resume from (None once the stream is exhausted).
"""
import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import BadRecord, ConfigError
from .settings_spec import check_settings, describe_errors, typed


@dataclass(frozen=True)
class Stream:
    name: str
    primary_key: str = "id"
    # Incremental mode asks for records whose cursor is >= the stored cursor (inclusive, so
    # records sharing the boundary value are re-read and deduplicated by content hash).
    cursor_field: str | None = None
    # A derived stream is never read from the provider: the engine computes it with
    # Connector.derive() from each record of the `derived_from` stream it writes, in the same
    # transaction. Derived keys must start with "<parent key>:", so a parent's derived set is
    # replaced as a whole: keys no longer derived are soft-deleted (HighLevel order -> tickets).
    derived_from: str | None = None

    def key_of(self, record):
        if not isinstance(record, dict):
            raise BadRecord(f"record is a {type(record).__name__}, not an object")
        value = record.get(self.primary_key)
        if value is None or value == "":
            raise BadRecord(f"missing primary key {self.primary_key!r}")
        if isinstance(value, (dict, list, float)):
            raise BadRecord(f"primary key {self.primary_key!r} has unusable type {type(value).__name__}")
        return str(value)


@dataclass
class ReadRequest:
    mode: str  # full | incremental | range | record
    params: dict = field(default_factory=dict)  # since, until, record_id, fiscal_year, ...
    cursor: Any = None  # incremental: the cursor stored by the last successful run


@dataclass
class Page:
    records: list
    next_state: dict | None  # None: the stream is finished
    total: int | None = None  # records in the whole stream, when the API says
    # Records the connector could not even parse; the engine logs them like invalid ones.
    bad_records: list = field(default_factory=list)  # list[BadRecord]


@dataclass(frozen=True)
class Param:
    """A run parameter a connector understands, so forms and the CLI can offer it
    (S5's fiscal-year selector). `choices_setting` names the connection setting that lists
    the allowed values."""

    name: str
    label: str
    kind: str = "text"  # text | date | integer | choice
    choices_setting: str | None = None
    help: str = ""

    def choices(self, settings):
        if not self.choices_setting:
            return None
        values = (settings or {}).get(self.choices_setting) or []
        return list(values) if isinstance(values, (list, tuple)) else []


@dataclass
class Services:
    """What shared code hands a connector: the way to build an HTTP client, config, and a
    way to persist what a provider changes under us (rotated tokens)."""

    config: dict
    redis: Any = None  # a redis.Redis, or None when running without Redis (inline CLI)
    connection_id: int | None = None
    app: Any = None  # the Flask app, so threads a connector starts can reach the database

    def __post_init__(self):
        # Settings left out (a connector built by hand, in a test or a script) take their defaults.
        from ..config import defaults

        self.config = {**defaults(), **self.config}
        if self.app is None:
            from flask import current_app, has_app_context

            if has_app_context():
                self.app = current_app._get_current_object()

    def update_credentials(self, mutate):
        """Read-modify-write the connection's encrypted credentials in a transaction of its
        own, committed before returning, with the connection row locked meanwhile (so two
        workers never both spend one rotating refresh token). `mutate(current)` returns the
        changes to merge, or None for none. Returns the credentials as stored afterwards."""
        from .state import update_connection

        return update_connection(self, "credentials", mutate)

    def update_settings(self, mutate):
        """The same for the connection's (non-secret) settings."""
        from .state import update_connection

        return update_connection(self, "settings", mutate)

    def rate_limiter(self, key, rate_limit):
        """The limiter shared by every worker under `key` (in Redis when there is one)."""
        from .. import redis_keys
        from .ratelimit import make_rate_limiter

        return make_rate_limiter(self.redis, redis_keys.key("ratelimit", key, prefix_=self.config["REDIS_PREFIX"]),
                                 rate_limit)

    def http(self, base_url, *, auth=None, rate_limit=None, rate_limit_key=None, **options):
        from .http import HttpClient

        limiter = None
        if rate_limit is not None:
            limiter = self.rate_limiter(rate_limit_key or f"connection:{self.connection_id}", rate_limit)
        return HttpClient(
            base_url,
            auth=auth,
            rate_limiter=limiter,
            timeout=options.pop("timeout", self.config["HTTP_TIMEOUT_SECONDS"]),
            max_retries=options.pop("max_retries", self.config["HTTP_MAX_RETRIES"]),
            backoff_base=options.pop("backoff_base", self.config["HTTP_BACKOFF_BASE_SECONDS"]),
            backoff_max=options.pop("backoff_max", self.config["HTTP_BACKOFF_MAX_SECONDS"]),
            max_retry_after=options.pop("max_retry_after", self.config["HTTP_MAX_RETRY_AFTER_SECONDS"]),
            **options,
        )


class Connector(abc.ABC):
    """Subclass, set `name` and `streams`, implement `read_page`. Register with @register."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    streams: ClassVar[tuple] = ()
    # The provider's name in a sentence ("waiting for Zoom's rate limit"); see provider_name().
    provider: ClassVar[str] = ""
    # Settings (non-secret, JSON), typed: what the form renders and the form, CLI and API
    # validate with (settings_spec.py). settings_fields, their names, is derived from it.
    settings_spec: ClassVar[tuple] = ()
    settings_fields: ClassVar[tuple] = ()
    # Credential keys (secret, encrypted) the UI asks for.
    credential_fields: ClassVar[tuple] = ()
    supported_modes: ClassVar[tuple] = ("full", "incremental", "range", "record")
    # Run parameters beyond mode and streams (list of Param), for the Sync now form and the CLI.
    run_params: ClassVar[tuple] = ()
    # Inbound webhooks: the provider's signature scheme, a key of
    # webapp.webhooks.signatures.SCHEMES ("standard", "zoom", "highlevel", "halopsa");
    # None means the connector takes no webhooks.
    webhook_scheme: ClassVar[str | None] = None

    # How the Sync now control names a full sync of everything (HaloPSA: "all tickets (full)").
    full_sync_label: ClassVar[str] = "everything (full)"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "settings_spec" in cls.__dict__ and "settings_fields" not in cls.__dict__:
            cls.settings_fields = tuple(spec.name for spec in cls.settings_spec)

    def __init__(self, settings, credentials, services):
        self.settings = typed(self.settings_spec, settings)
        # Stored settings are checked against the declaration before any use: one written by
        # hand or by an older version fails the run with a sentence, not with int("lots").
        problems = check_settings(self.settings_spec, self.settings)
        if problems:
            raise ConfigError("settings need fixing: " + describe_errors(problems))
        self.credentials = credentials or {}
        self.services = services

    @classmethod
    def provider_name(cls):
        """`provider`, or the first word of the title ("Zoom webinars" -> "Zoom")."""
        return cls.provider or (cls.title.split()[0] if cls.title else cls.name)

    def stream(self, name):
        for s in self.streams:
            if s.name == name:
                return s
        raise ConfigError(
            f"connector {self.name!r} has no stream {name!r}; known: {', '.join(s.name for s in self.streams)}"
        )

    def default_streams(self):
        return [s.name for s in self.streams]

    @abc.abstractmethod
    def read_page(self, stream, request, state):
        """Return the Page that follows `state` (None: the first page)."""

    def read_records(self, stream, record_ids):
        """Many records of `stream` in one request, for a provider with a bulk endpoint:
        {record id: Page of that record (empty when it is gone)}. None: the provider has
        none, and a batched record run reads each record with read_page (mode "record"),
        several at once, every request admitted by the shared rate limit."""
        return None

    @classmethod
    def has_bulk_reads(cls):
        return cls.read_records is not Connector.read_records

    def derive(self, stream, parent_key, parent):
        """The complete list of records of derived `stream` for one parent record, each
        keyed "<parent_key>:...". No requests of its own: it works from the parent and what
        read_page learned in this run. The engine stores them with the parent and
        soft-deletes the parent's earlier derived records that are no longer in the list."""
        raise ConfigError(f"connector {self.name!r} does not derive stream {stream.name!r}")

    def lists_all(self, stream, request):
        """Whether this run lists `stream` completely, so that after a successful run the
        records it did not see are gone at the provider (soft-deleted). Default: a full run
        not narrowed by since/until. Override when a mode or parameter narrows or widens it."""
        return request.mode == "full" and not any(request.params.get(p) for p in ("since", "until", "record_id"))

    def validate(self, stream, record):
        """Raise BadRecord for a record that must not be stored. The engine has already
        checked the primary key; override to check required fields and types."""

    def webhook_events(self, payload):
        """The records a verified, parsed webhook body asks to sync, as a list of
        (stream, record_id, deleted). Each record is fetched by a record run, in batches
        (webapp/record_batches.py). Empty: nothing to do."""
        return []

    def webhook_event_id(self, payload, headers):
        """The provider's id of this delivery (deduplication). None: the scheme's default
        (webhook-id header, HighLevel's webhookId, else a hash of the body)."""
        return None


REGISTRY = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls

