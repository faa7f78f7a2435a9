"""A run as the admin shows it: the run page, its websocket and its polling fallback all
send the same state. The Redis snapshot (webapp/progress.py) carries live progress; the
row is the truth about status, so it wins wherever the two disagree."""
from datetime import timezone

from sqlalchemy import func, select

from . import runs
from .error_words import run_error_words
from .extensions import db, redis_ext
from .models import TERMINAL_STATUSES, RunEvent
from .progress import read_snapshot

LOG_LINES = 200
RECORD_ERRORS_SHOWN = 100


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
        "error_words": run_error_words(run.error_class) if run.error_class else None,
        "finished_at": run.finished_at.isoformat() + "Z" if run.finished_at else None,
        "not_before": run.not_before.isoformat() + "Z" if run.not_before else None,
        "waiting_reason": runs.waiting_reason(run),
        "duration_seconds": (run.finished_at - run.started_at).total_seconds()
        if run.finished_at and run.started_at else None,
    }
    if from_row["waiting_reason"]:  # the reason says it all, the last error included
        from_row.update(error_class=None, error_message=None)
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
    return state.get("phase") or {"queued": "waiting for a worker", "waiting": "waiting"}.get(run.status)


def activity(run_id, state):
    """The activity log: the run's events from the database and the worker's latest progress
    lines from the snapshot, oldest first, as (epoch seconds, level, message)."""
    events = db.session.execute(
        select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "log")
        .order_by(RunEvent.id.desc()).limit(LOG_LINES)).scalars().all()
    lines = [{"at": epoch(e.created_at), "level": e.level, "message": e.message} for e in events]
    for m in state.get("messages", []):
        line = {"at": m.get("at", 0), "level": "info", "message": m.get("message", "")}
        # The worker says some things twice: live, and in the row's own event ("attempt 1
        # started" / "attempt 1 started on host"; "failed (config): ..." / "failed: ...").
        # One line each, the fuller one.
        twin = next((x for x in lines if abs(x["at"] - line["at"]) <= TWIN_SECONDS
                     and _gist(x["message"]) == _gist(line["message"])), None)
        if twin is None:
            lines.append(line)
        elif len(line["message"]) > len(twin["message"]):
            twin["message"] = line["message"]
    lines.sort(key=lambda line: line["at"])
    return lines[-LOG_LINES:]


TWIN_SECONDS = 10


def _gist(message):
    """What a log line says before its details: "attempt 1 started", "failed", "completed"."""
    for stop in (" on ", ": ", " ("):
        message = message.split(stop, 1)[0]
    return message.strip().lower()


def record_errors(run_id, limit=RECORD_ERRORS_SHOWN):
    base = select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "record_error")
    rows = db.session.execute(base.order_by(RunEvent.id.desc()).limit(limit)).scalars().all()
    count = db.session.execute(select(func.count()).select_from(base.subquery())).scalar_one()
    return [row.to_dict() for row in reversed(rows)], count


def epoch(naive_utc):
    return naive_utc.replace(tzinfo=timezone.utc).timestamp()
