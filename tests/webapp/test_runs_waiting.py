"""Waiting runs (webapp/runs.py): follow-ups of the active sync, the overlap policy,
deferral after a long rate limit and pauses between attempts."""
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.support import race_in_processes
from webapp import runs
from webapp.extensions import db
from webapp.models import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, WAITING, Run, RunEvent, utcnow


def _count(**where):
    query = select(func.count()).select_from(Run)
    for name, value in where.items():
        query = query.where(getattr(Run, name) == value)
    return db.session.scalar(query)


def _status(run_id):
    db.session.expire_all()
    return db.session.get(Run, run_id).status


def _start(run):
    attempt = runs.claim(run.id, "w1")
    assert attempt is not None
    return attempt


def test_a_trigger_with_other_parameters_waits_as_a_follow_up_and_starts_when_the_active_run_ends(app, make_connection):
    conn = make_connection(schedule="every:60")
    active = runs.trigger(conn, mode="incremental", enqueue=False).run
    attempt = _start(active)
    follow = runs.trigger(conn, mode="range", params={"fiscal_year": 2027}, trigger="event", enqueue=False)
    assert follow.created and follow.outcome == "follow_up" and follow.active.id == active.id
    assert follow.run.status == WAITING and follow.run.not_before is None
    assert runs.waiting_reason(follow.run) == f"waiting for run {active.id} of this connection to end"
    assert runs.claim(follow.run.id, "w2") is None  # a waiting run cannot be taken
    assert runs.finish(active.id, attempt, COMPLETED)
    assert _status(follow.run.id) == QUEUED
    assert runs.claim(follow.run.id, "w2") == 1


@pytest.mark.parametrize("end", [FAILED, CANCELLED])
def test_a_follow_up_starts_whatever_way_the_active_run_ends(app, make_connection, end):
    conn = make_connection(schedule="every:60")
    active = runs.trigger(conn, enqueue=False).run
    attempt = _start(active)
    follow = runs.trigger(conn, mode="incremental", trigger="api", enqueue=False).run
    if end == CANCELLED:
        runs.cancel(active.id)  # flag only: the worker stops at its next page
        assert _status(follow.id) == WAITING
        assert runs.finish(active.id, attempt, CANCELLED)
    else:
        assert runs.finish(active.id, attempt, FAILED, error_class="transient", error_message="boom")
    assert _status(follow.id) == QUEUED


def test_identical_triggers_coalesce_into_one_follow_up_and_only_one_starts_at_a_time(app, make_connection):
    conn = make_connection(schedule="every:60")
    active = runs.trigger(conn, enqueue=False).run
    attempt = _start(active)
    year = runs.trigger(conn, mode="range", params={"fiscal_year": 2027}, trigger="event", enqueue=False)
    again = runs.trigger(conn, mode="range", params={"fiscal_year": 2027}, trigger="api", enqueue=False)
    other = runs.trigger(conn, mode="range", params={"fiscal_year": 2028}, trigger="event", enqueue=False)
    assert again.outcome == "coalesced" and again.run.id == year.run.id and not again.created
    assert other.created and other.run.id != year.run.id
    assert _count(status=WAITING) == 2
    runs.finish(active.id, attempt, COMPLETED)
    # One sync at a time: the older follow-up is queued, the other keeps waiting behind it.
    assert (_status(year.run.id), _status(other.run.id)) == (QUEUED, WAITING)
    second = runs.claim(year.run.id, "w")
    runs.finish(year.run.id, second, COMPLETED)
    assert _status(other.run.id) == QUEUED


def test_cancel_works_on_a_waiting_run_and_it_never_starts(app, make_connection):
    conn = make_connection(schedule="every:60")
    active = runs.trigger(conn, enqueue=False).run
    attempt = _start(active)
    follow = runs.trigger(conn, mode="incremental", trigger="manual", enqueue=False).run
    assert runs.cancel(follow.id, requested_by="admin") == CANCELLED
    runs.finish(active.id, attempt, COMPLETED)
    assert _status(follow.id) == CANCELLED
    assert runs.claim(follow.id, "w") is None
    # A new identical trigger is no longer coalesced into the cancelled one.
    fresh = runs.trigger(conn, mode="incremental", trigger="manual", enqueue=False)
    assert fresh.created and fresh.outcome == "queued"


def test_a_scheduled_slot_meeting_an_active_sync_is_skipped_and_logged_by_default(app, make_connection):
    conn = make_connection(schedule="every:60")
    active = runs.trigger(conn, mode="range", params={"since": "2026-01-01"}, enqueue=False).run
    result = runs.trigger(conn, mode="full", trigger="schedule", requested_by="supervisor (slot 14:00Z)", enqueue=False)
    assert result.outcome == "skipped" and result.run.id == active.id and not result.created
    assert _count() == 1
    lines = db.session.execute(select(RunEvent.message).where(RunEvent.run_id == active.id)).scalars().all()
    assert any("scheduled slot was skipped" in line and "slot 14:00Z" in line for line in lines), lines


def test_overlap_policy_buffer_one_keeps_a_single_follow_up_for_any_number_of_slots(app, make_connection):
    conn = make_connection(schedule="every:60", settings={"overlap_policy": "buffer_one"})
    active = runs.trigger(conn, mode="full", trigger="schedule", enqueue=False).run
    slots = [runs.trigger(conn, mode="full", trigger="schedule", enqueue=False) for _ in range(3)]
    assert slots[0].outcome == "follow_up" and [s.outcome for s in slots[1:]] == ["coalesced", "coalesced"]
    assert {s.run.id for s in slots} == {slots[0].run.id} and slots[0].run.id != active.id
    assert _count(status=WAITING) == 1


def test_events_manual_and_api_follow_up_even_where_slots_are_skipped(app, make_connection):
    conn = make_connection(schedule="every:60")  # overlap policy: skip (the default)
    runs.trigger(conn, enqueue=False)
    for month, trigger in enumerate(("event", "manual", "api", "cli"), start=1):
        result = runs.trigger(conn, mode="range", params={"since": f"2026-0{month}-01"}, trigger=trigger,
                              enqueue=False)
        assert result.outcome == "follow_up", trigger


def test_promote_is_exactly_once_and_queues_one_follow_up_per_connection(app, make_connection):
    conn = make_connection(schedule="every:60")
    active = runs.trigger(conn, enqueue=False).run
    attempt = _start(active)
    first = runs.trigger(conn, mode="incremental", trigger="api", enqueue=False).run
    runs.trigger(conn, mode="range", params={"since": "2026-01-01"}, trigger="api", enqueue=False)
    # The run ends without its promotion (a worker killed between the two): the periodic job does it.
    db.session.execute(Run.__table__.update().where(Run.id == active.id).values(status=COMPLETED))
    db.session.commit()
    assert runs.promote_waiting() == [first.id]
    assert runs.promote_waiting() == []  # a second supervisor, or the next tick: nothing twice
    assert _count(status=WAITING) == 1


# -- deferral and pauses between attempts --------------------------------------------------

def test_defer_gives_the_attempt_back_keeps_the_place_and_resumes_when_due(app, make_connection):
    conn = make_connection(schedule="every:60")
    run = runs.trigger(conn, enqueue=False).run
    attempt = _start(run)
    now = utcnow()
    assert runs.defer(run.id, attempt, seconds=3600, reason="waiting for Zoom's rate limit", now=now) == WAITING
    db.session.expire_all()
    row = db.session.get(Run, run.id)
    assert (row.status, row.attempt, row.deferrals) == (WAITING, 0, 1)
    assert abs((row.not_before - (now + timedelta(hours=1))).total_seconds()) < 1
    assert runs.waiting_reason(row).startswith("waiting for Zoom's rate limit until ")
    # It keeps its place: a new trigger with the same parameters gets it, other parameters follow it.
    assert runs.trigger(conn, trigger="api", enqueue=False).run.id == run.id
    follow = runs.trigger(conn, mode="incremental", trigger="api", enqueue=False)
    assert follow.outcome == "follow_up" and follow.active.id == run.id
    assert runs.promote_waiting(now + timedelta(minutes=59)) == []
    assert runs.promote_waiting(now + timedelta(minutes=61)) == [run.id]
    assert runs.claim(run.id, "w2") == 1  # the same attempt number again: none was spent
    assert db.session.get(Run, run.id).rq_job_id.endswith(f"-run-{run.id}-1-d1")


def test_defer_fails_the_run_after_the_deferral_limit(app, make_connection):
    app.config["RUN_MAX_DEFERRALS"] = 1
    conn = make_connection(schedule="every:60")
    run = runs.trigger(conn, enqueue=False).run
    now = utcnow()
    assert runs.defer(run.id, _start(run), seconds=60, reason="waiting for Sandbox's rate limit", now=now) == WAITING
    runs.promote_waiting(now + timedelta(minutes=2))
    assert runs.defer(run.id, _start(run), seconds=60, reason="waiting for Sandbox's rate limit") == FAILED
    assert "gave up after waiting 1 times" in db.session.get(Run, run.id).error_message


def test_a_retry_with_a_pause_waits_until_its_time_and_spends_the_attempt(app, make_connection):
    conn = make_connection(schedule="every:60")
    run = runs.trigger(conn, enqueue=False).run
    attempt = _start(run)
    now = utcnow()
    status = runs.retry_later(run.id, attempt, error_class="transient", error_message="HTTP 503", delay=30, now=now)
    assert status == WAITING
    row = db.session.get(Run, run.id)
    assert row.attempt == 1 and abs((row.not_before - (now + timedelta(seconds=30))).total_seconds()) < 1
    assert "before attempt 2 of 3" in runs.waiting_reason(row)
    assert runs.promote_waiting(now + timedelta(seconds=29)) == []
    assert runs.promote_waiting(now + timedelta(seconds=31)) == [run.id]
    assert runs.claim(run.id, "w") == 2


def test_a_waiting_record_run_still_deduplicates_its_record(app, make_connection):
    from tests.support import TAKES_WEBHOOKS

    conn = make_connection(settings=TAKES_WEBHOOKS)
    first = runs.trigger(conn, mode="record", record_key="items:item-1", trigger="webhook", enqueue=False).run
    runs.defer(first.id, _start(first), seconds=600, reason="waiting for Sandbox's rate limit")
    again = runs.trigger(conn, mode="record", record_key="items:item-1", trigger="webhook", enqueue=False)
    assert again.run.id == first.id and not again.created


# -- races: the database keeps one follow-up per parameter set -------------------------------

def _race_event(config, barrier, results):
    from webapp import create_app

    child = create_app(config)
    with child.app_context():
        conn = runs.get_connection("racy")
        barrier.wait()
        result = runs.trigger(conn, mode="range", params={"fiscal_year": 2027}, trigger="event", enqueue=False)
        results.put((result.run.id, int(result.created), result.outcome))


def test_twenty_concurrent_identical_triggers_during_an_active_sync_make_one_follow_up(app, make_connection):
    conn = make_connection(name="racy", schedule="every:60")
    active = runs.trigger(conn, enqueue=False).run
    _start(active)
    outcomes = race_in_processes(app, _race_event, callers=20)
    assert len({run_id for run_id, _, _ in outcomes}) == 1, outcomes
    assert sum(created for _, created, _ in outcomes) == 1
    assert {outcome for _, _, outcome in outcomes} == {"follow_up", "coalesced"}
    assert _count(status=WAITING) == 1 and _count(status=RUNNING) == 1


@pytest.mark.parametrize("change", ["defer", "retry"])
def test_a_run_whose_cancel_was_asked_is_cancelled_instead_of_waiting(app, make_connection, change):
    conn = make_connection(schedule="every:60")
    run = runs.trigger(conn, enqueue=False).run
    attempt = _start(run)
    runs.cancel(run.id)  # running: the flag is set, the worker has not seen it yet
    if change == "defer":
        status = runs.defer(run.id, attempt, seconds=3600, reason="waiting for Sandbox's rate limit")
    else:
        status = runs.retry_later(run.id, attempt, error_class="transient", error_message="503", delay=60)
    assert status == CANCELLED and _status(run.id) == CANCELLED
