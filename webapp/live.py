"""Live run progress for browsers (SPEC §6): a websocket per watcher, one Redis subscriber
per web process.

Workers SET a snapshot and PUBLISH each update on synchub:progress:<run_id>. Here one
thread per process PSUBSCRIBEs to all of those channels and hands each message to the
watchers of that run; a watcher's socket thread sends it on. On connect a watcher gets the
current state (Redis snapshot merged with the run row, which is the truth about status),
then the updates, and the socket closes once the run has ended. Runs that end without a
publish (a queued run cancelled, a sweep of a dead worker's run) are noticed by a check of
the watched rows every DB_CHECK_SECONDS. If the websocket fails, the page polls
/admin/runs/<id>/progress.json, which answers with the same state.
"""
import json
import logging
import os
import queue
import threading
import time
from urllib.parse import urlsplit

import redis
from flask import Blueprint, abort, current_app, jsonify, request
from flask_login import current_user
from sqlalchemy import func, select

from .extensions import db, redis_ext, sock
from .models import TERMINAL_STATUSES, Run, RunEvent
from .progress import CHANNEL_PATTERN, read_snapshot

log = logging.getLogger(__name__)

bp = Blueprint("live", __name__, url_prefix="/admin/runs")

DB_CHECK_SECONDS = 1.0
# A run that ended this long ago without its final publish reaching us gets its state from the row.
FINAL_PUBLISH_GRACE_SECONDS = 1.0
WATCHER_BACKLOG = 200
LOG_LINES = 200
RECORD_ERRORS_SHOWN = 100


# -- the state of a run, as pages and sockets show it ----------------------------------
def run_state(run, snapshot=None, client=None):
    """The snapshot from Redis when there is one, with status (and, once the run has ended,
    the counters) from the row, which is the source of truth."""
    if snapshot is None:
        client = client if client is not None else redis_ext.optional()
        snapshot = read_snapshot(client, run.id) if client is not None else None
    state = dict(snapshot or {})
    from_row = {
        "run_id": run.id, "status": run.status, "cancel_requested": run.cancel_requested,
        "error_class": run.error_class, "error_message": run.error_message,
        "finished_at": run.finished_at.isoformat() + "Z" if run.finished_at else None,
    }
    if not snapshot or run.status in TERMINAL_STATUSES:
        from_row.update(phase=run.phase or snapshot_phase(run, state), processed=run.processed, total=run.total,
                        percent=run.percent, counters=run.counters)
    if run.status in TERMINAL_STATUSES:
        from_row["eta_seconds"] = None
    state.update(from_row)
    state.setdefault("rate", None)
    state.setdefault("eta_seconds", None)
    state.setdefault("messages", [])
    state.setdefault("updated_at", 0)
    return state


def snapshot_phase(run, state):
    return state.get("phase") or ("waiting for a worker" if run.status == "queued" else None)


def activity(run_id, state):
    """The activity log: the run's events from the database and the worker's latest progress
    lines from the snapshot, oldest first, as (epoch seconds, level, message)."""
    events = db.session.execute(
        select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "log")
        .order_by(RunEvent.id.desc()).limit(LOG_LINES)).scalars().all()
    lines = [{"at": _epoch(e.created_at), "level": e.level, "message": e.message} for e in events]
    lines += [{"at": m.get("at", 0), "level": "info", "message": m.get("message", "")}
              for m in state.get("messages", [])]
    lines.sort(key=lambda line: line["at"])
    return lines[-LOG_LINES:]


def record_errors(run_id, limit=RECORD_ERRORS_SHOWN):
    base = select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "record_error")
    rows = db.session.execute(base.order_by(RunEvent.id.desc()).limit(limit)).scalars().all()
    count = db.session.execute(select(func.count()).select_from(base.subquery())).scalar_one()
    return [row.to_dict() for row in reversed(rows)], count


def _epoch(naive_utc):
    from datetime import timezone

    return naive_utc.replace(tzinfo=timezone.utc).timestamp()


# -- the hub: one Redis subscriber per process ----------------------------------------
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
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(CHANNEL_PATTERN)
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
                            now - _epoch(run.finished_at) < FINAL_PUBLISH_GRACE_SECONDS:
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


# -- routes ------------------------------------------------------------------------------
@bp.record_once
def _setup(state):
    from .admin import auth

    auth.init_app(state.app)


@bp.before_request
def _guard():
    if not current_user.is_authenticated:
        return jsonify(error="unauthorized", reason="log in to the admin first"), 401
    origin = request.headers.get("Origin")
    # A page on another site must not open a socket with our user's cookie. Host names only:
    # a proxy in front may change the port in the Host header.
    if origin and urlsplit(origin).hostname != urlsplit("//" + request.host).hostname:
        return jsonify(error="forbidden", reason="cross-origin request refused"), 403
    return None


@sock.route("/<int:run_id>/live", bp=bp)
def live_socket(ws, run_id):
    the_hub = hub()
    watch = the_hub.watch(run_id)  # before reading the state, so no update falls in between
    try:
        run = db.session.get(Run, run_id)
        if run is None:
            ws.close(reason=1008, message="no such run")
            return
        state = run_state(run)
        db.session.remove()  # a socket may stay open for hours: give the connection back now
        last = _send(ws, watch, state, json.dumps(state, default=str))
        while state["status"] not in TERMINAL_STATUSES and ws.connected:
            try:
                state, raw = watch.inbox.get(timeout=1.0)
            except queue.Empty:
                continue
            if state.get("updated_at", 0) < last:
                continue  # older than what this watcher already has
            last = _send(ws, watch, state, raw)
    finally:
        the_hub.unwatch(watch)


def _send(ws, watch, state, raw):
    ws.send(raw)
    watch.last_status = state.get("status")
    return state.get("updated_at", 0)


@bp.route("/<int:run_id>/progress.json")
def progress_json(run_id):
    """The polling fallback: the same state the socket sends, plus record errors."""
    run = db.session.get(Run, run_id)
    if run is None:
        abort(404)
    state = run_state(run)
    errors, count = record_errors(run_id, limit=20)
    return jsonify(state=state, record_errors=errors, record_error_count=count)
