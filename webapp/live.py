"""The live progress relay of a web process: one Redis subscriber fans progress messages
out to the run's websocket watchers (the routes are in webapp/admin/live.py).

Workers SET a snapshot and PUBLISH each update on the run's progress channel
(webapp/progress.py). Here one thread per process PSUBSCRIBEs to all of those channels and
hands each message to the watchers of that run; a watcher's socket thread sends it on.
Runs that end without a publish (a queued run cancelled, a sweep of a dead worker's run)
are noticed by a check of the watched rows every DB_CHECK_SECONDS.
"""
import json
import logging
import os
import queue
import threading
import time

import redis
from flask import current_app
from sqlalchemy import select

from .extensions import db, redis_ext
from .models import TERMINAL_STATUSES, Run
from .progress import channel_pattern, database_of
from .run_view import epoch, run_state

log = logging.getLogger(__name__)

DB_CHECK_SECONDS = 1.0
# A run that ended this long ago without its final publish reaching us gets its state from the row.
FINAL_PUBLISH_GRACE_SECONDS = 1.0
WATCHER_BACKLOG = 200


class Watch:
    """One watcher's inbox. The hub never blocks on it: a slow socket loses old updates,
    never the newest."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.inbox = queue.Queue(maxsize=WATCHER_BACKLOG)
        self.last_status = None

    def deliver(self, item):
        while True:
            try:
                self.inbox.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.inbox.get_nowait()
                except queue.Empty:
                    pass


class LiveHub:
    def __init__(self, app):
        self.app = app
        self.pid = os.getpid()
        self._watches = {}  # run_id -> set of Watch
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self._last_db_warning = -1e9

    # watchers
    def watch(self, run_id):
        watch = Watch(run_id)
        with self._lock:
            self._watches.setdefault(run_id, set()).add(watch)
            if not self._started:
                self._started = True
                threading.Thread(target=self._run, name="live-hub", daemon=True).start()
        return watch

    def unwatch(self, watch):
        with self._lock:
            watchers = self._watches.get(watch.run_id)
            if watchers is not None:
                watchers.discard(watch)
                if not watchers:
                    del self._watches[watch.run_id]

    def watcher_count(self):
        with self._lock:
            return sum(len(w) for w in self._watches.values())

    def _fan_out(self, run_id, item):
        with self._lock:
            watchers = list(self._watches.get(run_id, ()))
        for watch in watchers:
            watch.deliver(item)

    def stop(self):
        self._stop.set()

    # the thread
    def _run(self):
        backoff = 0.5
        next_check = 0.0
        reconnecting = False
        while not self._stop.is_set():
            pubsub = None
            try:
                with self.app.app_context():
                    url = redis_ext.url
                client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
                with self.app.app_context():
                    pattern = channel_pattern(database_of(client))
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(pattern)
                self.subscribed.set()
                if reconnecting:
                    self._database_step(self._resync)  # whatever was published while we were away
                reconnecting, backoff = True, 0.5
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._relay(message)
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + DB_CHECK_SECONDS
                        self._database_step(self._check_rows)
            except redis.RedisError as exc:
                self.subscribed.clear()
                log.warning("live progress: Redis subscription lost (%s); retrying in %.1fs",
                            type(exc).__name__, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10)
            except Exception:  # never let the relay die: pages would silently stop updating
                log.exception("live progress: relay error")
                self._stop.wait(1)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                        client.close()
                    except redis.RedisError:
                        pass

    def _database_step(self, step):
        """A database outage must not stop the relay of Redis messages: log it and go on."""
        try:
            step()
        except Exception as exc:  # any driver error; the next check tries again
            now = time.monotonic()
            if now - self._last_db_warning > 60:
                self._last_db_warning = now
                log.warning("live progress: cannot read runs from the database (%s)", type(exc).__name__)

    def _relay(self, message):
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        run_id = channel.rsplit(":", 1)[-1]
        if not run_id.isdigit():
            return
        raw = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
        try:
            state = json.loads(raw)
        except ValueError:
            log.warning("live progress: run %s published a message that is not JSON", run_id)
            return
        self._fan_out(int(run_id), (state, raw))

    def _watched_ids(self):
        with self._lock:
            return list(self._watches)

    def _check_rows(self):
        """Runs that changed state in the database without a publish: send the row's state."""
        ids = self._watched_ids()
        if not ids:
            return
        with self.app.app_context():
            try:
                rows = db.session.execute(select(Run).where(Run.id.in_(ids))).scalars().all()
                now = time.time()
                for run in rows:
                    with self._lock:
                        watchers = list(self._watches.get(run.id, ()))
                    # A watcher with no status yet is still reading its own first state.
                    stale = [w for w in watchers if w.last_status not in (None, run.status)]
                    if not stale:
                        continue
                    if run.status in TERMINAL_STATUSES and run.finished_at and \
                            now - epoch(run.finished_at) < FINAL_PUBLISH_GRACE_SECONDS:
                        continue  # the worker's own final message is probably on its way
                    # updated_at stays the worker's (from the snapshot): stamping it with this
                    # machine's clock would make a skewed worker's next updates look old.
                    state = run_state(run)
                    item = (state, json.dumps(state, default=str))
                    for watch in stale:
                        watch.deliver(item)
            finally:
                db.session.remove()

    def _resync(self):
        ids = self._watched_ids()
        if not ids:
            return
        with self.app.app_context():
            try:
                for run in db.session.execute(select(Run).where(Run.id.in_(ids))).scalars():
                    state = run_state(run)
                    self._fan_out(run.id, (state, json.dumps(state, default=str)))
            finally:
                db.session.remove()


def hub():
    """This process's hub (a forked web worker gets its own)."""
    app = current_app._get_current_object()
    current = app.extensions.get("synchub_live")
    if current is None or current.pid != os.getpid():
        with _hub_lock:
            current = app.extensions.get("synchub_live")
            if current is None or current.pid != os.getpid():
                current = app.extensions["synchub_live"] = LiveHub(app)
    return current


_hub_lock = threading.Lock()
