"""Every setting of synchub, in one table: its app.config key, the environment variable it is
read from, its default (stated here and nowhere else) and what it means.

The table is grouped by area. docs/DEPLOY.md shows it as one table of knobs; a test keeps the
two equal (`python -m webapp.config` prints the Markdown). Code reads `app.config[KEY]`,
never `.get(KEY, default)`: a second default would drift from this one.
"""
import functools
import ipaddress
import os
from dataclasses import dataclass
from typing import Callable

DAY = 24 * 3600


def _bool(text):
    return text.strip().lower() not in ("0", "false", "no", "off", "")


def _text_or_none(text):
    return text or None


@functools.lru_cache(maxsize=8)  # read for each outgoing request by code without an app (webapp/net_guard.py)
def _networks(text):
    """Comma-separated networks in CIDR notation (`*`: any) as a tuple of ip_network."""
    networks = []
    for part in text.split(","):
        part = part.strip()
        if part == "*":
            networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        elif part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"{part!r} is not a network like 10.0.0.0/8") from None
    return tuple(networks)


@dataclass(frozen=True)
class Setting:
    key: str  # in app.config
    env: str  # the environment variable
    default: object  # None: unset (what that means is in `doc`)
    doc: str
    parse: Callable = str
    area: str = ""
    default_doc: str = ""  # how the default reads in docs, when the value alone would mislead

    def read(self, environ):
        raw = environ.get(self.env)
        if raw is None or raw == "":
            return self.default
        return self.parse(raw)


def _settings(area, *rows):
    return tuple(Setting(key, env, default, doc, parse, area, *extra)
                 for key, env, default, parse, doc, *extra in rows)


SETTINGS = (
    _settings(
        "core",
        ("REDIS_URL", "REDIS_URL", None, _text_or_none,
         "Redis for queues, live progress, leases and rate limits; unset: the bundled `redis-server`, "
         "started in `instance/` with a warning"),
        ("REDIS_PREFIX", "SYNCHUB_REDIS_PREFIX", "synchub", str,
         "prefix of every Redis key, RQ queue and RQ job id of this install: two installs sharing one Redis "
         "need different prefixes"),
        ("SYNCHUB_ENCRYPTION_KEYS", "SYNCHUB_ENCRYPTION_KEYS", None, _text_or_none,
         "comma-separated Fernet keys, newest first; credentials are encrypted with the first, any of them "
         "decrypts", "generated into `instance/` (with a warning)"),
        ("SECRET_KEY", "SECRET_KEY", None, _text_or_none,
         "Flask session and CSRF secret; the same on every web machine", "generated into `instance/`"),
        ("LOG_FORMAT", "SYNCHUB_LOG_FORMAT", "text", str, "`json` for one JSON object per line (run id, "
         "connection, attempt... as fields)"),
        ("LOG_LEVEL", "SYNCHUB_LOG_LEVEL", "INFO", str, "log level of every process"),
        ("DB_NETWORK_TIMEOUT_SECONDS", "SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS", 30, int,
         "how long a process waits on a PostgreSQL server that stopped answering (a network partition drops "
         "packets: without a bound a connection waits out TCP's retransmissions, about 15 minutes): the connect "
         "timeout, TCP keepalives and `tcp_user_timeout` of our connections, and the same keepalives and "
         "`tcp_user_timeout` on the server's side of each session (startup `options`), so the open transaction of a worker cut off mid-page is rolled back and its locks "
         "freed within this time instead of hours (docs/RELIABILITY.md, \"Partitions\"); 0 leaves the operating "
         "system's defaults (for a connection pooler that refuses the `options` startup parameter)"),
        ("CONNECTORS_DIR", "SYNCHUB_CONNECTORS_DIR", None, _text_or_none,
         "a folder of declared connectors (`*.yaml`, docs/CONNECTORS.md), loaded besides synchub's own; "
         "a broken file is refused with its line and the others still load", "unset (only synchub's own)"),
    ),
    _settings(
        "runs",
        ("HEARTBEAT_SECONDS", "SYNCHUB_HEARTBEAT_SECONDS", 10.0, float,
         "how often a running run refreshes its heartbeat (from a background thread, so a slow page never "
         "looks like a dead worker)"),
        ("STALE_AFTER_SECONDS", "SYNCHUB_STALE_AFTER_SECONDS", 180.0, float,
         "a running run whose heartbeat has not changed for this long is resumed elsewhere (or failed)"),
        ("RUN_MAX_ATTEMPTS", "SYNCHUB_RUN_MAX_ATTEMPTS", 3, int, "attempts of a run before it is failed"),
        ("WORKER_FORK", "SYNCHUB_WORKER_FORK", False, _bool,
         "`false`: each job runs in the worker process itself (RQ's SimpleWorker), which keeps its database "
         "connections and compiled statements from job to job, so a short run costs a third to three quarters "
         "of a forked one (docs/PERFORMANCE.md); the worker starts afresh in place past "
         "`SYNCHUB_WORKER_MAX_MEMORY_MB` or `SYNCHUB_WORKER_MAX_JOBS`. `true`: each job runs in a fresh fork "
         "of the worker (RQ's work horse), which isolates its memory and crashes from the worker. A killed "
         "worker's run is swept and resumed either way, and a Redis outage stops neither "
         "(docs/DEPLOY.md, \"Workers\")"),
        ("WORKER_MAX_MEMORY_MB", "SYNCHUB_WORKER_MAX_MEMORY_MB", 512, int,
         "without forking: a worker whose resident memory exceeds this after a job starts afresh in place "
         "(same command, same pid: no process manager is involved), so memory a job leaves behind stays "
         "bounded; 0: no ceiling"),
        ("WORKER_MAX_JOBS", "SYNCHUB_WORKER_MAX_JOBS", 0, int,
         "without forking: a worker starts afresh in place after this many jobs (anything else a job could "
         "leave behind, such as threads or files, is shed with it; a restart costs about a second); 0: never"),
        ("RUN_RETRY_BASE_SECONDS", "SYNCHUB_RUN_RETRY_BASE_SECONDS", 10.0, float,
         "pause before a failed run's second attempt; each further pause is three times longer (with "
         "jitter); 0 requeues at once"),
        ("RUN_RETRY_MAX_SECONDS", "SYNCHUB_RUN_RETRY_MAX_SECONDS", 900.0, float,
         "longest pause between two attempts of a run"),
        ("RUN_MAX_DEFERRALS", "SYNCHUB_RUN_MAX_DEFERRALS", 48, int,
         "times a run may wait out a provider's long rate limit (giving its attempt back) before it fails"),
        ("JOB_TIMEOUT_SECONDS", "SYNCHUB_JOB_TIMEOUT_SECONDS", 6 * 3600, int,
         "RQ's hard time limit for one run job; liveness is judged by the heartbeat, so set it above your "
         "longest full sync"),
        ("PROGRESS_TTL_SECONDS", "SYNCHUB_PROGRESS_TTL_SECONDS", DAY, int,
         "how long a run's live progress snapshot stays in Redis"),
        ("RECORDS_FEED_SETTLE_SECONDS", "SYNCHUB_RECORDS_FEED_SETTLE_SECONDS", 5.0, float,
         "the records feed (`GET /api/records`) leaves out changes younger than this, so a page that is "
         "still being committed is never half-read"),
    ),
    _settings(
        "providers",
        ("HTTP_TIMEOUT_SECONDS", "SYNCHUB_HTTP_TIMEOUT_SECONDS", 30.0, float,
         "timeout of one request to a provider"),
        ("HTTP_MAX_RETRIES", "SYNCHUB_HTTP_MAX_RETRIES", 5, int,
         "retries of a transient provider error inside a job, with full-jitter backoff"),
        ("HTTP_BACKOFF_BASE_SECONDS", "SYNCHUB_HTTP_BACKOFF_BASE_SECONDS", 0.5, float,
         "first backoff step of those retries"),
        ("HTTP_BACKOFF_MAX_SECONDS", "SYNCHUB_HTTP_BACKOFF_MAX_SECONDS", 30.0, float, "longest backoff step"),
        ("HTTP_MAX_RETRY_AFTER_SECONDS", "SYNCHUB_HTTP_MAX_RETRY_AFTER_SECONDS", 300.0, float,
         "longest Retry-After waited inside a job; a run told to wait longer waits (status `waiting`, "
         "no attempt spent) and the supervisor queues it again when the time comes"),
        ("ALLOW_PRIVATE_URLS", "SYNCHUB_ALLOW_PRIVATE_URLS", (), _networks,
         "networks (CIDR, comma-separated; `*` for any) that connection, token, alert and outbox URLs may "
         "reach although loopback, private or link-local; every other such URL is refused when saved and "
         "before each request and redirect (docs/SECURITY.md)", "none"),
    ),
    _settings(
        "webhooks",
        ("WEBHOOK_MAX_BYTES", "SYNCHUB_WEBHOOK_MAX_BYTES", 1024 * 1024, int,
         "larger webhook bodies get 413 before they are read"),
        ("WEBHOOK_CONNECTION_CACHE_SECONDS", "SYNCHUB_WEBHOOK_CONNECTION_CACHE_SECONDS", 5.0, float,
         "how long a web process trusts what it read about a connection for its webhooks (a new signing "
         "secret saved in another process is seen within this time); 0 reads it on every delivery"),
        ("WEBHOOK_KICK_DEBOUNCE_SECONDS", "SYNCHUB_WEBHOOK_KICK_DEBOUNCE_SECONDS", 0.05, float,
         "a web process asks Redis for a webhook dispatcher at most this often, and a dispatcher waits this "
         "long before its last look; web and worker processes must agree on it"),
        ("WEBHOOK_DB_WRITERS", "SYNCHUB_WEBHOOK_DB_WRITERS", 1, int,
         "webhook delivery batches a web process writes at once (group commit), each on its own database "
         "connection; one measured best (docs/PERFORMANCE.md, webhook ingest)"),
        ("RECORD_BATCH_MAX", "SYNCHUB_RECORD_BATCH_MAX", 500, int,
         "records one webhook record run fetches at most: the records of a burst of webhooks join a queued "
         "run of their connection until it holds this many (docs/ARCHITECTURE.md, the life of a webhook)"),
        ("RECORD_FETCH_CONCURRENCY", "SYNCHUB_RECORD_FETCH_CONCURRENCY", 8, int,
         "records a batched record run fetches at once, every request still admitted by the provider's "
         "shared rate limit"),
    ),
    _settings(
        "admin",
        ("SESSION_COOKIE_SECURE", "SYNCHUB_SECURE_COOKIES", True, _bool,
         "admin session cookie only over https (browsers make an exception for localhost); `0` on a trusted "
         "plain-http network"),
        ("LOGIN_MAX_FAILURES", "SYNCHUB_LOGIN_MAX_FAILURES", 5, int, "failed logins that lock an account"),
        ("LOGIN_MAX_FAILURES_PER_IP", "SYNCHUB_LOGIN_MAX_FAILURES_PER_IP", 30, int,
         "failed logins from one client address, across accounts, after which its failures no longer say "
         "whether the email exists (a right password still signs in, so a shared address locks nobody out)"),
        ("TRUSTED_PROXIES", "SYNCHUB_TRUSTED_PROXIES", 0, int,
         "reverse proxies in front of the web process that set `X-Forwarded-For`, `-Proto` and `-Host` "
         "(Werkzeug's ProxyFix); with it the login and API brakes count real client addresses and https at the "
         "proxy counts as https; 0 ignores those headers, which anyone can send (docs/DEPLOY.md, \"Behind a proxy\")"),
        ("LOGIN_LOCK_SECONDS", "SYNCHUB_LOGIN_LOCK_SECONDS", 900, int, "how long such a lock lasts"),
        ("ARGON2_PROFILE", "SYNCHUB_ARGON2_PROFILE", "RFC_9106_LOW_MEMORY", str,
         "password hash cost, a profile name of `argon2.profiles`"),
        ("WS_PING_SECONDS", "SYNCHUB_WS_PING_SECONDS", 25.0, float,
         "websocket ping interval of live progress, so dead sockets are noticed"),
    ),
    _settings(
        "api",
        ("CRON_SECRET", "SYNCHUB_CRON_SECRET", None, _text_or_none,
         "shared secret for `/api/cron/...` (header, never a query string)", "unset (cron endpoints refuse all)"),
        ("API_MAX_AUTH_FAILURES", "SYNCHUB_API_MAX_AUTH_FAILURES", 20, int,
         "wrong API tokens or cron secrets from one client address after which it gets 429 with Retry-After "
         "until `SYNCHUB_API_AUTH_BRAKE_SECONDS` have passed since its first failure; other clients are unaffected"),
        ("API_AUTH_BRAKE_SECONDS", "SYNCHUB_API_AUTH_BRAKE_SECONDS", 300, int,
         "the window in which those failures are counted"),
        ("METRICS_TOKEN", "SYNCHUB_METRICS_TOKEN", None, _text_or_none,
         "when set, `/metrics` needs `Authorization: Bearer <token>`", "unset (open, like most exporters)"),
    ),
    _settings(
        "supervisor",
        ("SUPERVISOR_TICK_SECONDS", "SYNCHUB_SUPERVISOR_TICK_SECONDS", 5.0, float,
         "each tick renews the leader lease, fires due schedules and writes the heartbeat"),
        ("LEADER_TTL_SECONDS", "SYNCHUB_LEADER_TTL_SECONDS", 30.0, float,
         "leader lease; a dead leader is replaced within this plus a tick"),
        ("SWEEP_INTERVAL_SECONDS", "SYNCHUB_SWEEP_INTERVAL_SECONDS", 15.0, float,
         "how often the leader sweeps stale runs, lost jobs, RQ's registries and stored webhook deliveries"),
        ("LOST_JOB_GRACE_SECONDS", "SYNCHUB_LOST_JOB_GRACE_SECONDS", 30.0, float,
         "a queued run whose RQ job is gone is enqueued again once it has been queued this long"),
        ("ALERT_INTERVAL_SECONDS", "SYNCHUB_ALERT_INTERVAL_SECONDS", 60.0, float, "how often alerts are checked"),
        ("RETENTION_INTERVAL_SECONDS", "SYNCHUB_RETENTION_INTERVAL_SECONDS", 3600.0, float,
         "how often old history is deleted"),
        ("OUTBOX_DRAIN_INTERVAL_SECONDS", "SYNCHUB_OUTBOX_DRAIN_INTERVAL_SECONDS", 30.0, float,
         "how often the leader enqueues the periodic outbox drain; 0 turns it off"),
        ("MAINTENANCE_JOBS", "SYNCHUB_MAINTENANCE_JOBS", "", str,
         "extra periodic RQ jobs the leader enqueues: `pkg.module.func=seconds,...`", "none"),
    ),
    _settings(
        "alerts",
        ("ISSUE_PAUSE_AFTER_FAILURES", "SYNCHUB_ISSUE_PAUSE_AFTER_FAILURES", 10, int,
         "a connection whose last this many runs failed (any cause) is paused; 0 never"),
        ("ISSUE_RECORDS_REJECTED_PERCENT", "SYNCHUB_ISSUE_RECORDS_REJECTED_PERCENT", 10.0, float,
         "a completed sync that skipped more than this share of its records opens a `records_rejected` issue"),
        ("FRESHNESS_INTERVAL_SECONDS", "SYNCHUB_FRESHNESS_INTERVAL_SECONDS", 60.0, float,
         "how often the leader compares each connection's data age with its freshness target"),
        ("ALERT_CONSECUTIVE_FAILURES", "SYNCHUB_ALERT_CONSECUTIVE_FAILURES", 3, int,
         "failed runs in a row of one connection that raise an alert"),
        ("ALERT_NO_SUCCESS_HOURS", "SYNCHUB_ALERT_NO_SUCCESS_HOURS", 24.0, float,
         "a scheduled connection without a completed run for this long raises an alert"),
        ("ALERT_STALE_WINDOW_SECONDS", "SYNCHUB_ALERT_STALE_WINDOW_SECONDS", 3600.0, float,
         "runs swept as stale within this window raise an alert"),
        ("ALERT_SUPERVISOR_SILENT_SECONDS", "SYNCHUB_ALERT_SUPERVISOR_SILENT_SECONDS", 120.0, float,
         "no supervisor heartbeat for this long raises an alert"),
    ),
    _settings(
        "retention",
        ("RETENTION_DAYS", "SYNCHUB_RETENTION_DAYS", 30.0, float,
         "days of history kept; the default of each kind below"),
        ("RETENTION_RUNS_DAYS", "SYNCHUB_RETENTION_RUNS_DAYS", None, float,
         "finished runs (never an active one)", "`SYNCHUB_RETENTION_DAYS`"),
        ("RETENTION_RUN_EVENTS_DAYS", "SYNCHUB_RETENTION_RUN_EVENTS_DAYS", None, float, "run events and logs",
         "`SYNCHUB_RETENTION_DAYS`"),
        ("RETENTION_WEBHOOK_DELIVERIES_DAYS", "SYNCHUB_RETENTION_WEBHOOK_DELIVERIES_DAYS", None, float,
         "stored webhook deliveries", "`SYNCHUB_RETENTION_DAYS`"),
        ("RETENTION_OUTBOX_EVENTS_DAYS", "SYNCHUB_RETENTION_OUTBOX_EVENTS_DAYS", None, float,
         "sent and dead outbox events", "`SYNCHUB_RETENTION_DAYS`"),
        ("RETENTION_SUPERVISORS_DAYS", "SYNCHUB_RETENTION_SUPERVISORS_DAYS", 7.0, float,
         "rows of supervisors that stopped"),
    ),
    _settings(
        "outbox",
        ("OUTBOX_MAX_ATTEMPTS", "SYNCHUB_OUTBOX_MAX_ATTEMPTS", 8, int,
         "attempts of an outbox event before it is dead"),
        ("OUTBOX_BACKOFF_BASE_SECONDS", "SYNCHUB_OUTBOX_BACKOFF_BASE_SECONDS", 10.0, float,
         "first wait before an event's next attempt (doubling, with jitter)"),
        ("OUTBOX_BACKOFF_MAX_SECONDS", "SYNCHUB_OUTBOX_BACKOFF_MAX_SECONDS", 3600.0, float, "longest such wait"),
        ("OUTBOX_LEASE_SECONDS", "SYNCHUB_OUTBOX_LEASE_SECONDS", 120.0, float,
         "a claimed event whose worker died is claimed again after this; it must outlast a batch of requests"),
        ("OUTBOX_CLAIM_BATCH", "SYNCHUB_OUTBOX_CLAIM_BATCH", 50, int,
         "events a sender claims at once; a worker killed mid-batch leaves at most this many to be sent again "
         "(same idempotency keys) after their lease"),
        ("OUTBOX_SEND_CONCURRENCY", "SYNCHUB_OUTBOX_SEND_CONCURRENCY", 5, int,
         "requests of a claimed batch a sender has in flight at once to a healthy destination that allows it "
         "(Loops), while that pays: a sender held by its own CPU rather than by the provider goes one at a time; "
         "never more than 10 nor than `SYNCHUB_OUTBOX_BREAKER_THRESHOLD`; 1 sends one at a time"),
        ("OUTBOX_PARALLEL_DRAINS", "SYNCHUB_OUTBOX_PARALLEL_DRAINS", 4, int,
         "real-time sending jobs at once; past this, new events wait for a running one"),
        ("OUTBOX_DRAIN_BUDGET_SECONDS", "SYNCHUB_OUTBOX_DRAIN_BUDGET_SECONDS", 60.0, float,
         "how long one sending job goes on before a fresh job carries on"),
        ("OUTBOX_HTTP_TIMEOUT_SECONDS", "SYNCHUB_OUTBOX_HTTP_TIMEOUT_SECONDS", 10.0, float,
         "timeout of one request to a destination"),
        ("OUTBOX_BREAKER_THRESHOLD", "SYNCHUB_OUTBOX_BREAKER_THRESHOLD", 5, int,
         "consecutive failures of a destination that open its circuit breaker"),
        ("OUTBOX_BREAKER_COOLDOWN_SECONDS", "SYNCHUB_OUTBOX_BREAKER_COOLDOWN_SECONDS", 30.0, float,
         "first time an open breaker waits before a probe"),
        ("OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS", "SYNCHUB_OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS", 600.0, float,
         "longest such wait (it doubles after each failed probe)"),
    ),
)
SETTINGS = tuple(setting for area in SETTINGS for setting in area)

# Read by the processes themselves, before any app exists (documented in the same table).
PROCESS_SETTINGS = (
    ("DATABASE_URL", "`sqlite:///instance/synchub.db`",
     "SQLAlchemy URL; `postgresql://...` (or `postgres://...`) uses psycopg 3"),
    ("SYNCHUB_INSTANCE_PATH", "`instance/`", "folder of the SQLite file, generated keys and the bundled Redis"),
    ("SYNCHUB_BIND` / `PORT", "`127.0.0.1` / `5000`", "where the `web` process listens (gunicorn.conf.py)"),
    ("SYNCHUB_WEB_SWITCH_INTERVAL", "`0.001`",
     "the web process's GIL switch interval in seconds (gunicorn.conf.py; Python's default is 0.005): "
     "threads woken from I/O wait less behind busy ones"),
    ("SYNCHUB_CLOCK_FILE", "unset", "the supervisor reads 'now' from this file (tests and drills)"),
)


class Config:
    """The settings read from the environment once, at app creation."""

    def __init__(self, instance_path, environ=None):
        environ = os.environ if environ is None else environ
        self.values = {setting.key: setting.read(environ) for setting in SETTINGS}
        for key in ("RETENTION_RUNS_DAYS", "RETENTION_RUN_EVENTS_DAYS", "RETENTION_WEBHOOK_DELIVERIES_DAYS",
                    "RETENTION_OUTBOX_EVENTS_DAYS"):
            if self.values[key] is None:
                self.values[key] = self.values["RETENTION_DAYS"]
        url = _database_url(environ.get("DATABASE_URL") or f"sqlite:///{os.path.join(instance_path, 'synchub.db')}")
        self.values.update(
            INSTANCE_PATH=instance_path,
            SQLALCHEMY_DATABASE_URI=url,
            SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True,
                                       **database_connect_args(url, self.values["DB_NETWORK_TIMEOUT_SECONDS"])},
            SOCK_SERVER_OPTIONS={"ping_interval": self.values["WS_PING_SECONDS"]},
        )

    def as_dict(self):
        return dict(self.values)


def from_environment(key, environ=None):
    """One setting as the process's environment gives it, for code that runs without an app."""
    setting = next(s for s in SETTINGS if s.key == key)
    return setting.read(os.environ if environ is None else environ)


@functools.lru_cache(maxsize=1)
def _defaults():
    return Config("instance", environ={}).as_dict()


def defaults():
    """Every setting's default (a fresh copy), for code given only part of the settings."""
    return dict(_defaults())


def setting_value(key, environ=None):
    """One setting as the environment gives it, for code that may run before any app exists
    (the connector registry is filled on first use, in any process)."""
    environ = os.environ if environ is None else environ
    return next(s for s in SETTINGS if s.key == key).read(environ)


def database_connect_args(url, timeout):
    """{"connect_args": ...} bounding the wait on an unanswering PostgreSQL server to about
    `timeout` seconds on both ends of each connection (the DB_NETWORK_TIMEOUT_SECONDS row), or {}.
    Keepalives detect a silent peer while nothing is in flight, TCP_USER_TIMEOUT while something
    is: on the server's side too, since a client cut off before it acknowledged the server's last
    answer leaves that answer in flight, and the session, its transaction and its locks, waiting
    out TCP's retransmissions (docs/RELIABILITY.md, bug 7). A slow but live reader is not cut: its
    kernel acknowledges the server's zero-window probes."""
    if timeout <= 0 or not url.startswith("postgresql"):
        return {}
    idle, interval = max(1, timeout // 3), max(1, timeout // 6)
    count = max(1, (timeout - idle) // interval)
    server = (f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} -c tcp_keepalives_count={count}"
              f" -c tcp_user_timeout={timeout * 1000}")
    return {"connect_args": {"connect_timeout": timeout, "keepalives": 1, "keepalives_idle": idle,
                             "keepalives_interval": interval, "keepalives_count": count,
                             "tcp_user_timeout": timeout * 1000, "options": server}}


def _database_url(url):
    # Heroku-style URLs and plain postgresql:// should use the psycopg 3 driver we ship.
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def markdown_table():
    """The table of docs/DEPLOY.md."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, doc in PROCESS_SETTINGS:
        lines.append(f"| `{name}` | {default} | {doc} |")
    area = None
    for s in SETTINGS:
        if s.area != area:
            area = s.area
            lines.append(f"| **{area}** | | |")
        default = s.default_doc or ("unset" if s.default is None else f"`{_shown(s.default)}`")
        lines.append(f"| `{s.env}` | {default} | {s.doc} |")
    return "\n".join(lines) + "\n"


def _shown(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


if __name__ == "__main__":
    print(markdown_table(), end="")
