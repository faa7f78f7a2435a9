"""The live progress channel in Redis (docs/ARCHITECTURE.md, the life of a run).

Workers SET a JSON snapshot per run (read by pages on connect and by the CLI) and
PUBLISH the same JSON on one channel per run (relayed to browsers by the websocket).
Redis is only the live view: the run row holds the persisted progress, so a failure
here never fails a run.
"""
import json
import logging
import time
import weakref

import redis

from . import redis_keys

log = logging.getLogger(__name__)

MAX_MESSAGES = 20
# A worker cut off from Redis (a network partition drops packets: docs/RELIABILITY.md,
# "Partitions") must not hold each page for the main client's 10 s socket timeout
# (extensions.py): snapshots go through a twin of that client with a short timeout, and after
# a failure the publisher stays quiet for a while. The run row holds the persisted progress.
PUBLISH_TIMEOUT_SECONDS = 2.0
QUIET_AFTER_FAILURE_SECONDS = 5.0
_twins = weakref.WeakKeyDictionary()  # a client's connection pool -> its short-timeout twin


def _short_timeout_twin(client):
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return client
    twin = _twins.get(pool)
    if twin is None:
        kwargs = dict(pool.connection_kwargs, socket_timeout=PUBLISH_TIMEOUT_SECONDS,
                      socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS)
        twin = _twins[pool] = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class, **kwargs))
    return twin


def snapshot_key(run_id):
    return redis_keys.key("progress", run_id)


def channel(run_id, database):
    """The channel a run's snapshots are published on. Pub/Sub ignores Redis database numbers
    (a PUBLISH on db 1 reaches a subscriber on db 3), so two installs that share one server by
    database number would see each other's run 1: the channel names the database."""
    return redis_keys.key("progress", f"db{database}", run_id)


def channel_pattern(database):
    return redis_keys.key("progress", f"db{database}", "*")


def database_of(client):
    """The database number a redis-py client is connected to (0 unless its URL chose one)."""
    pool = getattr(client, "connection_pool", None)
    return int((pool.connection_kwargs if pool is not None else {}).get("db") or 0)


class ProgressPublisher:
    def __init__(self, client, run_id, ttl=None):
        from flask import current_app

        self.client = _short_timeout_twin(client) if client is not None else None
        self.run_id = run_id
        self.ttl = current_app.config["PROGRESS_TTL_SECONDS"] if ttl is None else ttl
        # Read here, in the app context: publish may run in a thread.
        self.key = snapshot_key(run_id)
        self.channel = channel(run_id, database_of(client)) if client is not None else None
        self.messages = []
        self._warned = False
        self._failed_at = None

    def add_message(self, text):
        self.messages.append({"at": time.time(), "message": text})
        del self.messages[:-MAX_MESSAGES]

    def publish(self, snapshot):
        snapshot = dict(snapshot, run_id=self.run_id, messages=list(self.messages), updated_at=time.time())
        if self.client is None:
            return snapshot
        if self._failed_at is not None and time.monotonic() - self._failed_at < QUIET_AFTER_FAILURE_SECONDS:
            return snapshot
        payload = json.dumps(snapshot, default=str)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key, payload, ex=self.ttl)
            pipe.publish(self.channel, payload)
            pipe.execute()
            self._failed_at = None
        except redis.RedisError as exc:
            self._failed_at = time.monotonic()
            if not self._warned:
                log.warning("run %s: progress not published to Redis (%s); the run goes on", self.run_id, type(exc).__name__)
                self._warned = True
        return snapshot


def read_snapshot(client, run_id):
    try:
        raw = client.get(snapshot_key(run_id))
    except redis.RedisError:
        return None
    return json.loads(raw) if raw else None
