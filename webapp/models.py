"""Tables. Which state changes are allowed lives in runs.py, not here."""
from datetime import datetime, timezone

from sqlalchemy import Index, UniqueConstraint, text

from .extensions import db
from .schedules.parser import ScheduleError, parse as parse_schedule
from .trigger_policy import allowed_triggers

# The one status vocabulary: the database, Redis, the API, the admin and the CLI all use
# these strings, so no layer translates a status and none can disagree about one.
WAITING, QUEUED, RUNNING = "waiting", "queued", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
# waiting: the run exists but may not start yet: it follows the connection's active sync
# (a follow-up), or it is deferred until `not_before` (a long rate limit, a backoff).
ACTIVE_STATUSES = (WAITING, QUEUED, RUNNING)  # not finished: may be cancelled
TERMINAL_STATUSES = (COMPLETED, FAILED, CANCELLED)
STATUSES = ACTIVE_STATUSES + TERMINAL_STATUSES

MODES = ("full", "incremental", "range", "record")
TRIGGERS = ("manual", "schedule", "webhook", "event", "cli", "api")

# A partial index is what makes "one active run per connection" a database guarantee:
# two processes racing to insert can't both succeed, whatever machine they run on.
# Queries that should use one of these indexes repeat its predicate literally (runs.py):
# neither database can prove a partial index's predicate from bound parameters.
#
# The active sync of a connection is queued, running, or deferred (waiting with a
# not_before: it has started and will resume, so it keeps its place). A follow-up (waiting,
# no not_before) is not active: at most one per connection and parameter set waits.
ACTIVE_SYNC_WHERE = ("mode <> 'record' AND (status IN ('queued', 'running') "
                     "OR (status = 'waiting' AND not_before IS NOT NULL))")
FOLLOW_UP_WHERE = "mode <> 'record' AND status = 'waiting' AND not_before IS NULL"
# A record run not yet started: queued, or deferred (waiting) after a long rate limit.
QUEUED_RECORD_WHERE = "mode = 'record' AND status IN ('queued', 'waiting')"


def utcnow():
    """Naive UTC: SQLite keeps no zone, so every timestamp in the database is naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Connection(db.Model):
    __tablename__ = "connections"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(100), nullable=False, unique=True)
    connector = db.Column(db.String(50), nullable=False)
    settings = db.Column(db.JSON, nullable=False, default=dict)
    # Fernet token of the JSON credentials (webapp/credentials.py); never decrypted for display.
    credentials_encrypted = db.Column(db.Text, nullable=True)
    # "manual" | "every:<minutes>" | "hourly:<minute>" | "cron:<expression>"
    schedule = db.Column(db.String(120), nullable=False, default="manual")
    enabled = db.Column(db.Boolean, nullable=False, default=True)
    health = db.Column(db.String(20), nullable=False, default="ok")
    health_message = db.Column(db.Text, nullable=True)
    next_run_at = db.Column(db.DateTime, nullable=True)
    # Paused (webapp/connection_issues.py): scheduled and event runs are refused while set,
    # because they would fail the same way; saving credentials or settings resumes it.
    paused_at = db.Column(db.DateTime, nullable=True)
    paused_reason = db.Column(db.Text, nullable=True)
    paused_skipped = db.Column(db.Integer, nullable=False, default=0)  # runs refused meanwhile
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    @property
    def credentials(self):
        from .credentials import decrypt_credentials

        return decrypt_credentials(self.credentials_encrypted)

    @credentials.setter
    def credentials(self, value):
        from .credentials import encrypt_credentials

        self.credentials_encrypted = encrypt_credentials(value) if value else None

    @property
    def manual_only(self):
        """Never triggered automatically. An unreadable schedule counts as manual: a
        connection must not start running by itself because of a typo. (The parser is pure:
        no database, no Flask, nothing that imports this module.)"""
        try:
            return parse_schedule(self.schedule).manual
        except ScheduleError:
            return True

    @property
    def allowed_triggers(self):
        """The triggers that may start this connection's runs (webapp/trigger_policy.py)."""
        return allowed_triggers(self.settings, self.manual_only)

    def __repr__(self):  # never the credentials
        return f"<Connection {self.id} {self.name!r} {self.connector}>"


class Run(db.Model):
    __tablename__ = "runs"

    id = db.Column(db.Integer, primary_key=True)
    connection_id = db.Column(db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), nullable=False)
    streams = db.Column(db.JSON, nullable=False, default=list)
    mode = db.Column(db.String(20), nullable=False, default="full")
    params = db.Column(db.JSON, nullable=False, default=dict)
    record_key = db.Column(db.String(255), nullable=True)  # mode=record: "<stream>:<id>"
    trigger = db.Column(db.String(20), nullable=False, default="manual")
    requested_by = db.Column(db.String(120), nullable=True)
    status = db.Column(db.String(20), nullable=False, default=QUEUED)
    attempt = db.Column(db.Integer, nullable=False, default=0)
    max_attempts = db.Column(db.Integer, nullable=False, default=3)
    # Where to resume: {"stream": name, "state": <connector page state>, "done": [names],
    # "cursors": {stream: max cursor seen so far}}. Committed with each page's records.
    checkpoint = db.Column(db.JSON, nullable=True)
    seen = db.Column(db.Integer, nullable=False, default=0)
    created = db.Column(db.Integer, nullable=False, default=0)
    updated = db.Column(db.Integer, nullable=False, default=0)
    unchanged = db.Column(db.Integer, nullable=False, default=0)
    deleted = db.Column(db.Integer, nullable=False, default=0)
    failed = db.Column(db.Integer, nullable=False, default=0)
    phase = db.Column(db.String(50), nullable=True)
    processed = db.Column(db.Integer, nullable=False, default=0)
    total = db.Column(db.Integer, nullable=True)
    heartbeat_at = db.Column(db.DateTime, nullable=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    started_at = db.Column(db.DateTime, nullable=True)
    finished_at = db.Column(db.DateTime, nullable=True)
    error_class = db.Column(db.String(50), nullable=True)
    error_message = db.Column(db.Text, nullable=True)
    rq_job_id = db.Column(db.String(100), nullable=True)
    worker_name = db.Column(db.String(200), nullable=True)
    cancel_requested = db.Column(db.Boolean, nullable=False, default=False)
    # waiting runs: not to be queued before this instant (a deferral or a backoff); None for
    # a follow-up, which is queued when the connection's active sync ends.
    not_before = db.Column(db.DateTime, nullable=True)
    # Times this run gave its attempt back because the provider asked us to come later.
    deferrals = db.Column(db.Integer, nullable=False, default=0)
    # What makes two syncs "the same": mode, params and streams (runs.params_key). A trigger
    # that matches the active run returns it; one that does not follows it up.
    params_key = db.Column(db.String(40), nullable=True)
    # The counters above, stream by stream: {stream: {seen, created, updated, unchanged, deleted, failed}}.
    stream_counters = db.Column(db.JSON, nullable=True)
    # Seconds this run's requests waited for rate-limit budget or a provider's Retry-After
    # (webapp/rate_limit_waits.py), written with each page and at the end.
    rate_limit_wait_seconds = db.Column(db.Float, nullable=False, default=0.0, server_default="0")

    connection = db.relationship("Connection", lazy="joined")

    __table_args__ = (
        Index(
            "uq_runs_one_active_sync",
            "connection_id",
            unique=True,
            sqlite_where=text(ACTIVE_SYNC_WHERE),
            postgresql_where=text(ACTIVE_SYNC_WHERE),
        ),
        Index(
            "uq_runs_one_follow_up",
            "connection_id",
            "params_key",
            unique=True,
            sqlite_where=text(FOLLOW_UP_WHERE),
            postgresql_where=text(FOLLOW_UP_WHERE),
        ),
        Index(
            "uq_runs_one_queued_record",
            "connection_id",
            "record_key",
            unique=True,
            sqlite_where=text(QUEUED_RECORD_WHERE),
            postgresql_where=text(QUEUED_RECORD_WHERE),
        ),
        Index("ix_runs_status_heartbeat", "status", "heartbeat_at"),
        Index("ix_runs_connection_created", "connection_id", "created_at"),
    )

    @property
    def counters(self):
        return {k: getattr(self, k) for k in ("seen", "created", "updated", "unchanged", "deleted", "failed")}

    @property
    def percent(self):
        if self.status == COMPLETED:
            return 100.0
        if self.total:
            return min(100.0, round(100.0 * self.processed / self.total, 1))
        return None

    def to_dict(self):
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "connection": self.connection.name if self.connection else None,
            "streams": self.streams,
            "mode": self.mode,
            "params": self.params,
            "record_key": self.record_key,
            "trigger": self.trigger,
            "requested_by": self.requested_by,
            "status": self.status,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "counters": self.counters,
            "phase": self.phase,
            "processed": self.processed,
            "total": self.total,
            "percent": self.percent,
            "heartbeat_at": _iso(self.heartbeat_at),
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "error_class": self.error_class,
            "error_message": self.error_message,
            "cancel_requested": self.cancel_requested,
            "not_before": _iso(self.not_before),
            "deferrals": self.deferrals,
            "stream_counters": self.stream_counters or {},
        }


class RunEvent(db.Model):
    """A line of a run's activity log, or one record that could not be stored."""

    __tablename__ = "run_events"

    id = db.Column(db.Integer, primary_key=True)
    run_id = db.Column(db.Integer, db.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    level = db.Column(db.String(10), nullable=False, default="info")
    kind = db.Column(db.String(20), nullable=False, default="log")  # log | record_error
    stream = db.Column(db.String(100), nullable=True)
    record_key = db.Column(db.String(255), nullable=True)
    message = db.Column(db.Text, nullable=False)

    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    def to_dict(self):
        return {
            "id": self.id,
            "at": _iso(self.created_at),
            "level": self.level,
            "kind": self.kind,
            "stream": self.stream,
            "record_key": self.record_key,
            "message": self.message,
        }


class Record(db.Model):
    __tablename__ = "records"

    id = db.Column(db.Integer, primary_key=True)
    connection_id = db.Column(db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), nullable=False)
    stream = db.Column(db.String(100), nullable=False)
    external_id = db.Column(db.String(255), nullable=False)
    data = db.Column(db.JSON, nullable=False)
    content_hash = db.Column(db.String(64), nullable=False)
    first_seen_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_changed_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    deleted_at = db.Column(db.DateTime, nullable=True)
    last_run_id = db.Column(db.Integer, nullable=True)  # the run that last changed it
    # The run that last saw it. A successful full run soft-deletes rows it did not see;
    # resumed attempts keep the run id, so what an earlier attempt saw still counts.
    last_seen_run_id = db.Column(db.Integer, nullable=True)

    __table_args__ = (UniqueConstraint("connection_id", "stream", "external_id", name="uq_records_identity"),)


class StreamState(db.Model):
    """The incremental cursor of one stream, advanced only when a run completes."""

    __tablename__ = "stream_states"

    connection_id = db.Column(db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    stream = db.Column(db.String(100), primary_key=True)
    cursor = db.Column(db.JSON, nullable=True)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_by_run_id = db.Column(db.Integer, nullable=True)


def _iso(value):
    return value.isoformat() + "Z" if value else None


# --- tables used by the admin, the API, webhooks, the outbox and the supervisor ----------
# Defined with the core so there is one linear migration history; their rules live in
# the modules of those areas.

OUTBOX_STATUSES = ("pending", "processing", "done", "dead")
# Sent or given up. The rows in neither are the unsent ones, the condition of the outbox's
# partial indexes, which a claim states word for word (webapp/outbox/claim.py).
OUTBOX_FINISHED = ("done", "dead")
OUTBOX_UNSENT_WHERE = f"status NOT IN ({', '.join(repr(s) for s in OUTBOX_FINISHED)})"


class User(db.Model):
    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), nullable=False, unique=True)
    password_hash = db.Column(db.String(255), nullable=False)
    is_admin = db.Column(db.Boolean, nullable=False, default=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_login_at = db.Column(db.DateTime, nullable=True)
    failed_logins = db.Column(db.Integer, nullable=False, default=0)
    locked_until = db.Column(db.DateTime, nullable=True)


class ApiToken(db.Model):
    """API bearer tokens. Only a SHA-256 of the token is stored; it is shown once."""

    __tablename__ = "api_tokens"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(100), nullable=False)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime, nullable=True)
    revoked_at = db.Column(db.DateTime, nullable=True)


class WebhookDelivery(db.Model):
    """An accepted inbound webhook, stored before it is answered. Unique per provider
    event id, so parallel duplicates produce one delivery."""

    __tablename__ = "webhook_deliveries"

    id = db.Column(db.Integer, primary_key=True)
    connection_id = db.Column(db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), nullable=False)
    provider_event_id = db.Column(db.String(255), nullable=False)
    event_type = db.Column(db.String(100), nullable=True)
    received_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    signature_verdict = db.Column(db.String(20), nullable=False, default="valid")
    headers = db.Column(db.JSON, nullable=False, default=dict)  # signature headers only, no auth
    raw_body = db.Column(db.LargeBinary, nullable=False)
    # received -> enqueued -> processed | ignored | failed
    outcome = db.Column(db.String(20), nullable=False, default="received")
    run_ids = db.Column(db.JSON, nullable=False, default=list)
    error = db.Column(db.Text, nullable=True)
    duplicates = db.Column(db.Integer, nullable=False, default=0)

    __table_args__ = (
        UniqueConstraint("connection_id", "provider_event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_outcome", "outcome", "received_at"),
    )


class OutboxEvent(db.Model):
    __tablename__ = "outbox_events"

    id = db.Column(db.Integer, primary_key=True)
    connection_id = db.Column(db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), nullable=True)
    type = db.Column(db.String(100), nullable=False)
    key = db.Column(db.String(255), nullable=False)  # events with one key are delivered in order
    payload = db.Column(db.JSON, nullable=False, default=dict)
    idempotency_key = db.Column(db.String(100), nullable=False, unique=True)
    status = db.Column(db.String(20), nullable=False, default="pending")
    attempts = db.Column(db.Integer, nullable=False, default=0)
    max_attempts = db.Column(db.Integer, nullable=False, default=8)
    next_attempt_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    lease_until = db.Column(db.DateTime, nullable=True)
    claimed_by = db.Column(db.String(200), nullable=True)
    last_error = db.Column(db.Text, nullable=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    delivered_at = db.Column(db.DateTime, nullable=True)

    __table_args__ = (
        Index("ix_outbox_events_status_next", "status", "next_attempt_at"),
        Index("ix_outbox_events_key_id", "key", "id"),
        # The rows still to send, the only ones a claim looks at (webapp/outbox/claim.py):
        # small however many sent rows the table keeps.
        Index("ix_outbox_events_unsent", "id", sqlite_where=text(OUTBOX_UNSENT_WHERE),
              postgresql_where=text(OUTBOX_UNSENT_WHERE)),
        Index("ix_outbox_events_unsent_key", "key", "id", sqlite_where=text(OUTBOX_UNSENT_WHERE),
              postgresql_where=text(OUTBOX_UNSENT_WHERE)),
    )


class SupervisorState(db.Model):
    """One row per supervisor process: its last tick and whether it leads. The health page
    and alerting read it; leadership itself is a Redis lease."""

    __tablename__ = "supervisors"

    name = db.Column(db.String(200), primary_key=True)
    hostname = db.Column(db.String(200), nullable=True)
    pid = db.Column(db.Integer, nullable=True)
    is_leader = db.Column(db.Boolean, nullable=False, default=False)
    started_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_tick_at = db.Column(db.DateTime, nullable=True)


_OPEN_ALERT = "cleared_at IS NULL"


class Alert(db.Model):
    """An alert condition (consecutive failures, no recent success, dead outbox events,
    stale runs, silent scheduler). At most one open alert per (kind, subject)."""

    __tablename__ = "alerts"

    id = db.Column(db.Integer, primary_key=True)
    kind = db.Column(db.String(50), nullable=False)
    subject = db.Column(db.String(200), nullable=False, default="")
    message = db.Column(db.Text, nullable=False)
    fired_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    cleared_at = db.Column(db.DateTime, nullable=True)

    __table_args__ = (
        Index("uq_alerts_one_open", "kind", "subject", unique=True,
              sqlite_where=text(_OPEN_ALERT), postgresql_where=text(_OPEN_ALERT)),
    )


_OPEN_ISSUE = "resolved_at IS NULL"


class ConnectionIssue(db.Model):
    """Something wrong with a connection that a person can act on, by cause
    (webapp/connection_issues.py). At most one open issue per connection and cause: a cause
    that happens again adds an occurrence."""

    __tablename__ = "connection_issues"

    id = db.Column(db.Integer, primary_key=True)
    connection_id = db.Column(db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), nullable=False)
    cause = db.Column(db.String(40), nullable=False)
    opened_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_seen_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    resolved_at = db.Column(db.DateTime, nullable=True)
    resolution = db.Column(db.Text, nullable=True)  # what resolved it, in words
    occurrences = db.Column(db.Integer, nullable=False, default=1)
    last_message = db.Column(db.Text, nullable=True)  # redacted, for people
    run_ids = db.Column(db.JSON, nullable=False, default=list)  # the latest runs that showed it

    connection = db.relationship("Connection", lazy="joined")

    __table_args__ = (
        Index("uq_connection_issues_one_open", "connection_id", "cause", unique=True,
              sqlite_where=text(_OPEN_ISSUE), postgresql_where=text(_OPEN_ISSUE)),
        Index("ix_connection_issues_opened", "opened_at"),
    )

    def to_dict(self):
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "connection": self.connection.name if self.connection else None,
            "cause": self.cause,
            "status": "open" if self.resolved_at is None else "resolved",
            "opened_at": _iso(self.opened_at),
            "last_seen_at": _iso(self.last_seen_at),
            "resolved_at": _iso(self.resolved_at),
            "resolution": self.resolution,
            "occurrences": self.occurrences,
            "last_message": self.last_message,
            "run_ids": list(self.run_ids or []),
        }


# Roll-ups of finished runs per connection, period and status (webapp/rollups.py): what the
# statistics read instead of every run. Periods are hours (3600) and days (86400), by the
# hour or day the run was created in. d0..dN-1 count durations in log-spaced bins.
ROLLUP_DURATION_BINS = 192
ROLLUP_COUNTERS = ("runs", "seen", "created", "updated", "deleted", "skipped", "retries", "durations")
run_rollups = db.Table(
    "run_rollups",
    db.Column("period_seconds", db.Integer, primary_key=True),
    db.Column("connection_id", db.Integer, db.ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True),
    db.Column("period_start", db.DateTime, primary_key=True),
    db.Column("status", db.String(20), primary_key=True),
    *(db.Column(name, db.Integer, nullable=False, server_default="0") for name in ROLLUP_COUNTERS),
    db.Column("duration_sum", db.Float, nullable=False, server_default="0"),
    db.Column("rate_limit_wait_seconds", db.Float, nullable=False, server_default="0"),
    *(db.Column(f"d{k}", db.Integer, nullable=False, server_default="0") for k in range(ROLLUP_DURATION_BINS)),
    Index("ix_run_rollups_period", "period_seconds", "period_start"),
)
