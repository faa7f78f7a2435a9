"""Prometheus metrics at /metrics (protected by SYNCHUB_METRICS_TOKEN, docs/DEPLOY.md).

Events are counted in-process and flushed to Redis hashes (HINCRBYFLOAT), so every web
process, RQ work horse (a new process per job) and supervisor, on any machine, adds to
the same numbers, and nothing piles up on disk per pid. A scrape reads those hashes, plus
what the database and RQ already know (active runs, queue lengths, oldest queued run,
supervisor leader and last tick), and renders them with the official prometheus-client.
"""
import atexit
import functools
import json
import logging
import os
import threading
from collections import defaultdict
from contextlib import contextmanager

import redis
from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import redis_keys
from sqlalchemy import func, select

log = logging.getLogger(__name__)

# name -> (kind, help, label names). Kinds: counter | histogram.
METRICS = {
    "runs_started": ("counter", "Runs queued, by connection and trigger", ("connection", "trigger")),
    "runs_finished": ("counter", "Run attempts that ended, by connection, status and trigger",
                      ("connection", "status", "trigger")),
    "run_duration_seconds": ("histogram", "Wall time of finished runs", ("connection", "status")),
    "records": ("counter", "Records synced, by outcome", ("connection", "stream", "outcome")),
    "provider_requests": ("counter", "HTTP requests to providers, by host and status code", ("host", "status")),
    "provider_retries": ("counter", "Provider requests retried, by host and reason", ("host", "reason")),
    "rate_limit_wait_seconds": ("counter", "Seconds spent waiting for rate-limit budget or Retry-After", ("key",)),
    "webhook_deliveries": ("counter", "Inbound webhooks, by verdict", ("connection", "verdict")),
    "outbox_events": ("counter", "Outbox events reaching a status", ("status",)),
    "outbox_delivery_latency_seconds": ("histogram", "Publish to delivered", ()),
    "stale_runs_swept": ("counter", "Running runs whose worker was lost, by action", ("action",)),
}
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


class _Buffer:
    """Per-process increments, flushed to Redis by a daemon thread every second and at exit.
    A forked RQ work horse starts with an empty buffer and flushes when its job ends."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = defaultdict(float)
        self.configured_url = None
        self.instance_path = None
        self.key = None  # "<prefix>:metrics", set by init_app: the flush thread has no app context
        self.thread = None
        self.muted = False  # see muted()

    @property
    def redis_url(self):
        if self.configured_url:
            return self.configured_url
        if self.instance_path:
            # The bundled Redis: use it if it runs, never start it from here.
            from .local_redis import running_local_redis_url

            return running_local_redis_url(self.instance_path)
        return None

    def add(self, field, amount):
        self.add_many(((field, amount),))

    def add_many(self, amounts):
        """[(field, amount)] under one lock: a histogram observation is up to 16 fields."""
        if self.muted:
            return
        with self.lock:
            for field, amount in amounts:
                self.values[field] += amount
        if self.thread is None and (self.configured_url or self.instance_path):
            self.thread = threading.Thread(target=self._loop, name="metrics-flush", daemon=True)
            self.thread.start()

    def take(self):
        with self.lock:
            values, self.values = self.values, defaultdict(float)
        return values

    def flush(self, client=None):
        if self.key is None:
            return  # no app was made in this process: nowhere to send them
        values = self.take()
        if not values:
            return
        try:
            if client is None:
                url = self.redis_url
                if url is None:
                    raise ValueError("no Redis yet")
                client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
            pipe = client.pipeline(transaction=False)
            for field, amount in values.items():
                pipe.hincrbyfloat(self.key, field, amount)
            pipe.execute()
        except (redis.RedisError, TypeError, ValueError) as exc:
            # Metrics must never break a sync: keep the numbers for the next flush.
            with self.lock:
                for field, amount in values.items():
                    self.values[field] += amount
            log.debug("metrics flush failed: %s", type(exc).__name__)

    def _loop(self):
        import time

        while True:
            time.sleep(1.0)
            self.flush()

    def after_fork(self):
        self.lock = threading.Lock()
        self.values = defaultdict(float)
        self.thread = None
        self.muted = False


_buffer = _Buffer()
os.register_at_fork(after_in_child=_buffer.after_fork)
atexit.register(_buffer.flush)


def _label_values(name, labels):
    kind, _, names = METRICS[name]
    missing = set(names) - set(labels)
    if missing:
        raise ValueError(f"metric {name} needs labels {sorted(missing)}")
    return tuple(str(labels[n]) for n in names)


# A field is the JSON text of [name, label values]. The same few label sets recur on every
# request and delivery, so each field is encoded once (bounded: label values are hosts,
# statuses and stream names).
@functools.lru_cache(maxsize=4096)
def _field_of(name, label_values):
    return json.dumps([name, list(label_values)])


@functools.lru_cache(maxsize=1024)
def _histogram_fields(name, label_values):
    """((bound, its bucket's field), ...), the sum's field, the count's field."""
    buckets = tuple((bound, _field_of(name + ":bucket", (*label_values, _le(bound)))) for bound in BUCKETS)
    return buckets, _field_of(name + ":sum", label_values), _field_of(name + ":count", label_values)


def _field(name, labels):
    return _field_of(name, _label_values(name, labels))


def inc(name, amount=1, **labels):
    _buffer.add(_field(name, labels), amount)


def observe(name, value, **labels):
    """Histogram observation: one count per bucket the value falls in, plus sum and count."""
    buckets, sum_field, count_field = _histogram_fields(name, _label_values(name, labels))
    amounts = [(field, 1) for bound, field in buckets if value <= bound]
    amounts += ((sum_field, value), (count_field, 1))
    _buffer.add_many(amounts)


def flush(client=None):
    """`client`: a Redis client to send with (the worker's own, connected already); else
    one is made from the configured URL."""
    _buffer.flush(client)


@contextmanager
def muted():
    """Count nothing meanwhile: for the worker's rehearsal of a run (worker/rehearsal.py),
    whose runs never existed."""
    _buffer.muted = True
    try:
        yield
    finally:
        _buffer.muted = False


def init_app(app):
    _buffer.configured_url = app.config.get("REDIS_URL") or None
    _buffer.instance_path = app.instance_path
    _buffer.key = redis_keys.key("metrics", prefix_=app.config["REDIS_PREFIX"])


def _le(bound):
    return "+Inf" if bound == float("inf") else repr(float(bound))


# -- exposition ---------------------------------------------------------------------------

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_endpoint():
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        import hmac

        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            return Response("metrics need the bearer token set in SYNCHUB_METRICS_TOKEN\n", 401)
    flush()  # this process's own latest numbers
    registry = CollectorRegistry()
    registry.register(_Collector(current_app._get_current_object()))
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")


class _Collector:
    def __init__(self, app):
        self.app = app

    def collect(self):
        with self.app.app_context():
            yield from self._from_redis()
            yield from self._from_database()
            yield from self._from_queues()

    def _from_redis(self):
        from .extensions import redis_ext

        try:
            raw = redis_ext.client.hgetall(redis_keys.key("metrics"))
        except redis.RedisError:
            raw = {}
        series = defaultdict(dict)
        for field, value in raw.items():
            name, labels = json.loads(field)
            series[name][tuple(labels)] = float(value)
        for name, (kind, help_text, label_names) in METRICS.items():
            full = f"synchub_{name}"
            if kind == "counter":
                family = CounterMetricFamily(full, help_text, labels=label_names)
                for labels, value in sorted(series.get(name, {}).items()):
                    family.add_metric(list(labels), value)
                yield family
            else:
                family = HistogramMetricFamily(full, help_text, labels=label_names)
                for labels, total in sorted(series.get(name + ":sum", {}).items()):
                    buckets = [(le, series.get(name + ":bucket", {}).get(labels + (le,), 0.0))
                               for le in (_le(b) for b in BUCKETS)]
                    family.add_metric(list(labels), buckets, total)
                yield family

    def _from_database(self):
        from .extensions import db
        from .models import ACTIVE_STATUSES, QUEUED, Connection, Run, SupervisorState, utcnow

        active = GaugeMetricFamily("synchub_runs_active", "Runs waiting, queued or running", labels=("connection", "status"))
        rows = db.session.execute(
            select(Connection.name, Run.status, func.count()).join(Connection, Run.connection_id == Connection.id)
            .where(Run.status.in_(ACTIVE_STATUSES)).group_by(Connection.name, Run.status)).all()
        for name, status, count in rows:
            active.add_metric([name, status], count)
        yield active
        oldest = db.session.execute(select(func.min(Run.created_at)).where(Run.status == QUEUED)).scalar()
        yield GaugeMetricFamily("synchub_oldest_queued_run_age_seconds", "Age of the oldest queued run",
                                value=(utcnow() - oldest).total_seconds() if oldest else 0.0)
        leader = GaugeMetricFamily("synchub_supervisor_leader", "1 for the supervisor that leads", labels=("name",))
        tick = GaugeMetricFamily("synchub_supervisor_last_tick_age_seconds", "Seconds since a supervisor's last tick",
                                 labels=("name",))
        for state in db.session.execute(select(SupervisorState)).scalars():
            leader.add_metric([state.name], 1.0 if state.is_leader else 0.0)
            if state.last_tick_at:
                tick.add_metric([state.name], (utcnow() - state.last_tick_at).total_seconds())
        yield leader
        yield tick
        db.session.remove()

    def _from_queues(self):
        from .queue import queue_lengths

        family = GaugeMetricFamily("synchub_queue_length", "Jobs waiting in each RQ queue", labels=("queue",))
        try:
            for name, length in queue_lengths().items():
                family.add_metric([name], length)
        except redis.RedisError:
            pass
        yield family
