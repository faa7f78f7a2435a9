"""Firing due slots many at a time (docs/PERFORMANCE.md, "Supervisor scale"): 10,000
connections due in the same minute must all get their run within that minute, which a
transaction, a run INSERT, an event INSERT and an RQ round trip per slot cannot do.

A batch is one transaction:
  1. take the slots: one conditional UPDATE per (due_at, next_at, schedule) group,
     `WHERE id IN (...) AND next_run_at = :due AND schedule = :text AND enabled RETURNING id`
     (the same condition as slot.take_slot, so racing supervisors still fire each slot
     once: a slot not returned was taken by another one, or changed);
  2. read the taken connections and which of them have an active sync or a waiting
     follow-up (one query each);
  3. refuse, in words, what check_trigger refuses (trigger policy, schedule_mode): the
     slot is used up, as slot by slot;
  4. a connection whose active sync meets the slot under the overlap policy `skip`: the
     slot is logged on that run (webapp/trigger_policy.py), in this transaction;
  5. give back the slots that need runs.trigger's care (`buffer_one` with an active sync,
     a waiting follow-up, which may coalesce, a paused connection: pausing counts the
     refusal and commits), and insert one queued run for each of the others in one
     statement, ON CONFLICT DO NOTHING; a connection whose active sync appeared meanwhile
     is left out by the one-active-sync index and its slot given back too;
  6. the runs' "created" events and the skip notes in one statement, then the commit.
After the commit the runs are announced and enqueued in one Redis pipeline; if that
fails the runs stay queued and the lost-job sweep (webapp/recovery.py, requeue_lost)
enqueues them. The slots given back are fired slot by slot (slot.fire_slot), which takes
each again, conditionally. If the batch fails in the database (say a deadlock between two
supervisors taking overlapping batches during a change of leader), it is rolled back
whole and its slots are fired slot by slot.
"""
import logging
from collections import defaultdict
from types import SimpleNamespace

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from .. import runs, trigger_policy
from ..extensions import db
from ..models import QUEUED, RUNNING, WAITING, Connection, Run, RunEvent, utcnow
from ..queue import enqueue_execute_runs
from .slot import fire_slot, outcome_of, requested_by_of, scheduled_mode

log = logging.getLogger(__name__)

# Slots per transaction: large enough that the fixed costs (a commit, a Redis round trip)
# vanish, small enough that a batch holds the database's locks for a short moment.
BATCH_SIZE = 250


def fire_in_batches(slots, now, requested_by, size=None):
    """[SlotOutcome] of the DueSlots `slots`, in their order."""
    size = size or BATCH_SIZE
    outcomes = []
    for start in range(0, len(slots), size):
        outcomes += fire_batch(slots[start:start + size], now, requested_by)
    return outcomes


def fire_batch(slots, now, requested_by):
    outcomes = [outcome_of(slot, now) for slot in slots]
    try:
        created, one_by_one = _fire_together(slots, outcomes, requested_by)
    except DBAPIError as exc:
        db.session.rollback()
        log.warning("schedule: a batch of %s slots failed in the database (%s); firing them one by one",
                    len(slots), type(exc).__name__)
        return [fire_slot(slot, now, requested_by) for slot in slots]
    _enqueue(created, slots)
    for index in one_by_one:
        outcomes[index] = fire_slot(slots[index], now, requested_by)
    return outcomes


def _fire_together(slots, outcomes, requested_by):
    """Steps 1-6 above. Returns ({index: QueuedRun} created, [indexes left to fire one by one])."""
    taken = _take(slots, outcomes)
    if not taken:
        db.session.rollback()
        return {}, []
    connections = {c.id: c for c in db.session.execute(
        select(Connection).where(Connection.id.in_([slots[i].connection_id for i in taken]))).scalars()}
    active, follow_ups = _syncs_of(list(connections))
    one_by_one, rows, skipped = [], {}, {}
    for index in taken:
        slot, outcome = slots[index], outcomes[index]
        connection = connections[slot.connection_id]
        if connection.paused_at is not None or slot.connection_id in follow_ups:
            one_by_one.append(index)  # pausing counts the refusal and commits; a follow-up may coalesce
            continue
        mode, refused = scheduled_mode(connection.settings)
        try:
            if refused:
                raise runs.TriggerRefused(refused)
            runs.check_trigger(connection, mode, "schedule")  # no database: the connection is not paused
        except runs.TriggerRefused as exc:
            outcome.action, outcome.reason = "refused", str(exc)  # the slot stays used up
            continue
        if slot.connection_id in active:
            if trigger_policy.follows_up(connection.settings, "schedule"):
                one_by_one.append(index)  # buffer_one: runs.trigger inserts the follow-up
            else:
                skipped[index] = active[slot.connection_id]
            continue
        rows[index] = _run_row(slot, mode, requested_by)
    inserted = runs.insert_queued_syncs(list(rows.values())) if rows else {}
    created = {index: inserted[row["connection_id"]] for index, row in rows.items() if row["connection_id"] in inserted}
    one_by_one += [index for index in rows if index not in created]
    _give_back([slots[i] for i in one_by_one])
    events = [{"run_id": run.id, "message": f"queued by schedule ({rows[index]['requested_by']})"}
              for index, run in created.items()]
    events += [{"run_id": run_id, "message": runs.skipped_slot_note(requested_by_of(requested_by, slots[index].due_at))}
               for index, run_id in skipped.items()]
    if events:
        db.session.execute(RunEvent.__table__.insert(), [dict(event, created_at=utcnow()) for event in events])
    db.session.commit()
    for index, run in created.items():
        outcomes[index].action, outcomes[index].run_id = "enqueued", run.id
    for index, run_id in skipped.items():
        outcomes[index].action, outcomes[index].run_id = "skipped_active", run_id
    return created, sorted(one_by_one)


def _syncs_of(connection_ids):
    """({connection id: its active sync's id}, {connection ids with a waiting follow-up})."""
    active, follow_ups = {}, set()
    for connection_id, run_id, status, not_before in db.session.execute(
            select(Run.connection_id, Run.id, Run.status, Run.not_before)
            .where(Run.connection_id.in_(connection_ids), Run.mode != "record",
                   Run.status.in_((QUEUED, RUNNING, WAITING)))):
        if status == WAITING and not_before is None:
            follow_ups.add(connection_id)
        else:
            active[connection_id] = run_id
    return active, follow_ups


def _take(slots, outcomes):
    """Step 1: the indexes of the slots taken (not committed)."""
    groups = defaultdict(list)
    for index, slot in enumerate(slots):
        groups[(slot.due_at, outcomes[index].next_run_at, slot.text)].append(index)
    table = Connection.__table__
    taken = []
    for (due_at, next_at, text), indexes in groups.items():
        by_id = {slots[i].connection_id: i for i in indexes}
        ids = db.session.execute(
            table.update().where(table.c.id.in_(list(by_id)), table.c.next_run_at == due_at, table.c.schedule == text,
                                 table.c.enabled.is_(True))
            .values(next_run_at=next_at).returning(table.c.id)).scalars().all()
        taken += [by_id[connection_id] for connection_id in ids]
    return sorted(taken)


def _give_back(slots):
    """Undo step 1 for these slots, in the same transaction: as if never taken."""
    table = Connection.__table__
    groups = defaultdict(list)
    for slot in slots:
        groups[slot.due_at].append(slot.connection_id)
    for due_at, ids in groups.items():
        db.session.execute(table.update().where(table.c.id.in_(ids)).values(next_run_at=due_at))


def _run_row(slot, mode, requested_by):
    """The columns of a slot's run, as runs.trigger(trigger="schedule") would insert them."""
    return dict(connection_id=slot.connection_id, mode=mode, params={}, trigger="schedule",
                requested_by=requested_by_of(requested_by, slot.due_at), streams=[], record_key=None,
                params_key=runs.params_key(mode, None, None), status=QUEUED, attempt=0,
                max_attempts=current_app.config["RUN_MAX_ATTEMPTS"], created_at=utcnow())


def _enqueue(created, slots):
    """After the commit: count, log and hand the runs to RQ in one pipeline."""
    if not created:
        return
    for index, run in created.items():
        runs.announce_created(SimpleNamespace(name=slots[index].connection), [run])
    try:
        enqueue_execute_runs(list(created.values()))
    except Exception as exc:  # Redis errors of any kind: the rows are the source of truth
        log.warning("schedule: %s runs stay queued, their enqueue failed (%s); the lost-job sweep enqueues them",
                    len(created), type(exc).__name__)
