"""Record runs in batches: the records of a burst of webhooks join a few runs instead of
one run each (docs/ARCHITECTURE.md, "The life of a webhook").

A batched record run is an ordinary record run (mode "record", one row, the usual
statuses) whose params list its records: {"records": [[stream, record id, deleted,
[delivery ids]], ...]}. Its record_key is its first record's, so the partial unique index
uq_runs_one_queued_record still keeps that record from being queued twice.

The webhook dispatcher calls `add_records` inside the transaction that settles a batch of
deliveries. For each record:
  - already in a queued or waiting record run of the connection: it gets that run (the
    delivery's id is added to the record's entry, so its outcome can be told later);
  - else it joins an open batch: a run with trigger webhook that no worker has claimed
    yet (status queued, attempt 0), while it holds fewer than RECORD_BATCH_MAX records;
  - else it goes into a new queued run with the others of this call.
Every change of an existing run is a conditional UPDATE on the status and attempt read
(PostgreSQL also locks those rows as it reads them: a worker's claim waits for our
commit, then reads the records we added). When a run moved on meanwhile, StaleBatch makes
the dispatcher take its whole batch again. A run that was claimed keeps exactly the
records it had, so a retried, swept or resumed run refetches those and no others.
"""
import json

import orjson
from flask import current_app
from sqlalchemy import bindparam, text, update

from . import runs
from .extensions import db
from .models import QUEUED, QUEUED_RECORD_WHERE, Run, RunEvent, WebhookDelivery, utcnow


# The first key of the PostgreSQL advisory locks taken here (the second: the connection id).
ADVISORY_LOCK_SPACE = 20_003


class StaleBatch(Exception):
    """A run we were adding records to changed meanwhile (claimed, cancelled): nothing of
    this transaction may be committed; the caller rolls back and tries again."""


def entries_of(params):
    """The records of a record run as [stream, record id, deleted, [delivery ids]]: a
    batch lists them; a run of one record (the API, the CLI, a replay) names it."""
    if "records" in (params or {}):
        return [list(entry) for entry in params["records"]]
    return [[params.get("stream"), str(params.get("record_id")), bool(params.get("deleted")), []]]


def add_records(connection, mapped, *, trigger="webhook"):
    """Put the records of [(delivery id, [(stream, record id, deleted)])] of one connection
    into record runs, in the caller's transaction (not committed, not enqueued).

    Returns ({delivery id: [run ids]}, [runs.QueuedRun created here]). Raises
    runs.TriggerRefused (or TriggerOff) when the connection takes no such runs, StaleBatch
    or IntegrityError when another transaction got in the way (the caller retries)."""
    runs.check_trigger(connection, "record", trigger, "batch")
    if db.session.get_bind().dialect.name == "postgresql":
        # One dispatcher at a time adds a connection's records (until its commit): else two
        # could each start a batch with the same record. SQLite writers are one at a time anyway.
        db.session.execute(text("SELECT pg_advisory_xact_lock(:space, :connection_id)"),
                           {"space": ADVISORY_LOCK_SPACE, "connection_id": connection.id})
    limit = max(1, int(current_app.config["RECORD_BATCH_MAX"]))
    existing = _queued_record_runs(connection.id)
    where_is = {}  # record key -> the run that has it
    for run in existing:
        for entry in run["entries"]:
            where_is.setdefault(_key(entry), run)
    open_runs = [run for run in existing if _is_open(run, trigger) and len(run["entries"]) < limit]
    fresh, changed, by_delivery = [], {}, {}
    for delivery_id, events in mapped:
        ids = by_delivery.setdefault(delivery_id, [])
        for stream, record_id, deleted in events:
            entry = [stream, str(record_id), bool(deleted), [delivery_id]]
            run = where_is.get(_key(entry))
            if run is None:
                run = open_runs[0] if open_runs else None
                if run is None:
                    if not fresh or len(fresh[-1]["entries"]) >= limit:
                        fresh.append({"id": None, "entries": [], "fresh": True})
                    run = fresh[-1]
                run["entries"].append(entry)
                where_is[_key(entry)] = run
                if open_runs and run is open_runs[0] and len(run["entries"]) >= limit:
                    open_runs.pop(0)
            else:
                _merge(run, entry, delivery_id)
            if not run.get("fresh"):
                changed[run["id"]] = run
            ids.append(run)
    _update_existing(changed.values())
    created = _insert_fresh(connection, fresh, trigger)
    return ({delivery_id: list(dict.fromkeys(run["id"] for run in rows)) for delivery_id, rows in by_delivery.items()},
            created)


def _key(entry):
    return f"{entry[0]}:{entry[1]}"


def _is_open(run, trigger):
    return (run["status"] == QUEUED and run["attempt"] == 0 and run["trigger"] == trigger
            and run["batched"])


def _merge(run, entry, delivery_id):
    """A record already queued: the same fetch serves this delivery too. It is fetched
    (not only marked deleted) if any of its events says it still exists."""
    for mine in run["entries"]:
        if _key(mine) == _key(entry):
            mine[2] = bool(mine[2]) and entry[2]
            if delivery_id not in mine[3]:
                mine[3].append(delivery_id)
            return


def _queued_record_runs(connection_id):
    """The connection's record runs not yet started (queued, or waiting after a deferral),
    through the partial index uq_runs_one_queued_record (its predicate spelled out, and
    SQLite told to take it: runs.queued_record_runs says why). PostgreSQL locks the rows."""
    dialect = db.session.get_bind().dialect.name
    hint = "INDEXED BY uq_runs_one_queued_record" if dialect == "sqlite" else ""
    lock = " FOR UPDATE" if dialect == "postgresql" else ""
    # The params as text, decoded here with orjson: in a backlog (workers behind a burst) every
    # dispatch reads every queued batch, and decoding them with the json module (psycopg's
    # loader) was a third of the dispatcher's CPU (docs/PERFORMANCE.md, "The dispatcher's reads").
    statement = text(f"SELECT id, status, attempt, trigger, CAST(params AS TEXT) AS params FROM runs {hint} "  # noqa: S608  constants only; values are bound
                     f"WHERE connection_id = :connection_id AND {QUEUED_RECORD_WHERE} ORDER BY id{lock}")
    rows = db.session.execute(statement, {"connection_id": connection_id}).all()
    found = []
    for row in rows:
        params = orjson.loads(row.params) if row.params else {}
        batched = "records" in params
        if not batched and row.params:
            # A run of one record (the API, the CLI) may name it by a number beyond 64 bits,
            # which orjson would round; a batch's ids are strings (add_records writes them).
            params = json.loads(row.params)
        # Freshly decoded: the batch's own lists can be worked on, no copy (entries_of copies).
        entries = params["records"] if batched else entries_of(params)
        found.append({"id": row.id, "status": row.status, "attempt": row.attempt, "trigger": row.trigger,
                      "batched": batched, "params": params, "entries": entries})
    return found


def _update_existing(changed):
    """The runs that got records or delivery ids: conditional on what was read."""
    for run in changed:
        if not run["batched"]:
            continue  # a run of one record from elsewhere: it serves the delivery as it is
        result = db.session.execute(
            update(Run).where(Run.id == run["id"], Run.status == run["status"], Run.attempt == run["attempt"])
            .values(params={**run["params"], "records": run["entries"]},
                    streams=sorted({entry[0] for entry in run["entries"]}))
            .execution_options(synchronize_session=False))
        if result.rowcount != 1:
            raise StaleBatch(f"run {run['id']} changed while records were added to it")


def _insert_fresh(connection, fresh, trigger):
    if not fresh:
        return []
    rows = {}
    for run in fresh:
        first = run["entries"][0]
        rows[_key(first)] = dict(
            connection_id=connection.id, mode="record", record_key=_key(first), trigger=trigger,
            params={"records": run["entries"]}, streams=sorted({entry[0] for entry in run["entries"]}),
            requested_by=None, status=QUEUED, attempt=0,
            max_attempts=current_app.config["RUN_MAX_ATTEMPTS"], created_at=utcnow())
    inserted = runs.insert_record_runs(rows, trigger)
    for run in fresh:
        run["id"] = inserted[_key(run["entries"][0])].id
    db.session.execute(
        RunEvent.__table__.insert(),
        [{"run_id": run["id"], "message": f"queued by {trigger} with {len(run['entries'])} record(s)"}
         for run in fresh])
    return list(inserted.values())


def mark_failed_deliveries(delivery_ids, message):
    """A record of a batch could not be synced: the deliveries that asked for it say so
    (outcome failed, with the reason), in the run's page transaction."""
    if not delivery_ids:
        return
    table = WebhookDelivery.__table__
    # The outcomes of webapp/webhooks/dispatch.py: "enqueued" (its runs exist) -> "failed".
    db.session.execute(update(table).where(table.c.id.in_(bindparam("ids", expanding=True)),
                                           table.c.outcome == "enqueued")
                       .values(outcome="failed", error=message[:500]), {"ids": list(delivery_ids)})
