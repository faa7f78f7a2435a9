"""A run's live progress for the run page: a websocket per watcher (fed by this process's
relay, webapp/live.py) and /admin/runs/<id>/progress.json, the polling fallback that answers
with the same state. On connect a watcher gets the current state, then the updates, and the
socket closes once the run has ended. Login, and the refusal of sockets opened by pages of
other sites (a browser sends our cookie with them), are the admin guard's
(webapp/admin/__init__.py)."""
import json
import queue

from flask import abort, jsonify

from ..extensions import db, sock
from ..live import hub
from ..models import TERMINAL_STATUSES, Run
from ..run_view import record_errors, run_state
from .blueprint import bp


@sock.route("/runs/<int:run_id>/live", bp=bp)
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


@bp.route("/runs/<int:run_id>/progress.json")
def progress_json(run_id):
    """The polling fallback: the same state the socket sends, plus record errors."""
    run = db.session.get(Run, run_id)
    if run is None:
        abort(404)
    state = run_state(run)
    errors, count = record_errors(run_id, limit=20)
    return jsonify(state=state, record_errors=errors, record_error_count=count)
