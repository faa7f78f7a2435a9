"""Connection health: issues by cause, pausing and resuming, freshness targets
(docs/ARCHITECTURE.md, "Connection health").

An issue is something wrong with one connection that a person can act on, by cause:

    auth_expired       401: credentials expired or revoked          pauses the connection
    permission_denied  403: the credentials lack a permission       pauses the connection
    config_invalid     settings a person must fix                   pauses the connection
    quota_exhausted    the provider asked us to wait (a long rate limit)
    provider_down      transient failures outlasted every attempt
    records_rejected   a sync skipped more than ISSUE_RECORDS_REJECTED_PERCENT of its records
    stale_data         the last successful sync is older than the connection's freshness target
    internal           a bug: the worker's log has the traceback

At most one open issue per (connection, cause), by a partial unique index: a cause that
happens again adds an occurrence (first and last seen, the last message, the latest runs).
A successful sync resolves what it disproves; saving new credentials or settings resolves
what they fix. Opening and resolving each publish one notification through the outbox to
every `notify` connection, in the same transaction: exactly one per change, never a storm.

A paused connection (Connection.paused_at) refuses scheduled and event runs, which would
fail the same way, and counts them; manual, API and CLI runs still go. It pauses on a
pausing cause, or after ISSUE_PAUSE_AFTER_FAILURES failed runs in a row of any cause;
saving credentials or settings resumes it and starts one run to prove the fix.
"""
import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from . import outbox
from .extensions import db
from .models import COMPLETED, FAILED, Connection, ConnectionIssue, Run, utcnow

log = logging.getLogger(__name__)

AUTH_EXPIRED, PERMISSION_DENIED, CONFIG_INVALID = "auth_expired", "permission_denied", "config_invalid"
QUOTA_EXHAUSTED, PROVIDER_DOWN, RECORDS_REJECTED = "quota_exhausted", "provider_down", "records_rejected"
STALE_DATA, INTERNAL = "stale_data", "internal"
CAUSES = (AUTH_EXPIRED, PERMISSION_DENIED, CONFIG_INVALID, QUOTA_EXHAUSTED, PROVIDER_DOWN, RECORDS_REJECTED,
          STALE_DATA, INTERNAL)
LABELS = {
    AUTH_EXPIRED: "credentials expired", PERMISSION_DENIED: "permission denied",
    CONFIG_INVALID: "settings need fixing", QUOTA_EXHAUSTED: "provider quota exhausted",
    PROVIDER_DOWN: "provider unreachable", RECORDS_REJECTED: "records rejected",
    STALE_DATA: "data older than its target", INTERNAL: "internal error",
}
PAUSING = (AUTH_EXPIRED, PERMISSION_DENIED, CONFIG_INVALID)
# What a successful sync disproves (records_rejected and stale_data have tests of their own).
DISPROVED_BY_SUCCESS = (AUTH_EXPIRED, PERMISSION_DENIED, CONFIG_INVALID, QUOTA_EXHAUSTED, PROVIDER_DOWN, INTERNAL)
FIXED_BY_CREDENTIALS = (AUTH_EXPIRED, PERMISSION_DENIED)
FIXED_BY_SETTINGS = (CONFIG_INVALID,)
RUNS_KEPT = 20  # run ids an issue remembers
PAUSED_TRIGGERS = ("schedule", "event")


def cause_of(error_class, message):
    """The cause of a failed run, from its error class (webapp/retry_policy.py) and message."""
    if error_class == "auth":
        return PERMISSION_DENIED if "HTTP 403" in (message or "") else AUTH_EXPIRED
    if error_class == "config":
        return CONFIG_INVALID
    if error_class in ("transient", "rate_limited", "worker_lost"):
        return PROVIDER_DOWN
    return INTERNAL


def describe_pause(connection):
    """"paused: credentials expired since 09:12, 14 runs skipped", or None."""
    if connection.paused_at is None:
        return None
    skipped = connection.paused_skipped or 0
    return (f"paused: {connection.paused_reason} since {connection.paused_at:%Y-%m-%d %H:%M} UTC, "
            f"{skipped} run{'s' if skipped != 1 else ''} skipped")


def refusal(connection, trigger):
    """A sentence when a paused connection refuses `trigger` (counted as a skipped run), else
    None. Committed at once: the count must survive whatever the caller does next."""
    if trigger not in PAUSED_TRIGGERS or connection.paused_at is None:
        return None
    db.session.execute(update(Connection).where(Connection.id == connection.id, Connection.paused_at.is_not(None))
                       .values(paused_skipped=Connection.paused_skipped + 1).execution_options(synchronize_session=False))
    db.session.commit()
    db.session.refresh(connection)
    return f"connection {connection.name!r} is {describe_pause(connection)}; fix it and save, or run it by hand"


# -- what happens to a run ---------------------------------------------------------------


def after_run(run_id, status, now=None, end=None):
    """A run ended (any path): open or add to its cause's issue, pause, or resolve what a
    success disproves. Commits. `end`: the run's row as runs.ended read it (runs.RunEnd)."""
    if status not in (COMPLETED, FAILED):
        return
    row = end
    if row is None:
        row = db.session.execute(select(Run.connection_id, Run.mode, Run.error_class, Run.error_message, Run.seen,
                                        Run.failed).where(Run.id == run_id)).first()
        db.session.rollback()
    if row is None:
        return
    now = now or utcnow()
    if status == FAILED:
        db.session.rollback()  # only reads so far (runs.ended's): end them before writing
        cause = cause_of(row.error_class, row.error_message)
        if row.mode == "record" and cause not in FIXED_BY_CREDENTIALS:
            return  # one record's failure (gone at the provider, say) says little about the connection
        record(row.connection_id, cause, row.error_message, run_id=run_id, now=now)
        if cause in PAUSING:
            pause(row.connection_id, LABELS[cause], now)
        elif _failed_in_a_row(row.connection_id) >= max(1, current_app.config["ISSUE_PAUSE_AFTER_FAILURES"]) \
                and current_app.config["ISSUE_PAUSE_AFTER_FAILURES"] > 0:
            pause(row.connection_id, f"{current_app.config['ISSUE_PAUSE_AFTER_FAILURES']} failed runs in a row "
                                     f"({LABELS[cause]})", now)
        return
    # Most successes find no open issue: one read says which causes to resolve, instead of
    # a read and a commit per group of causes (docs/PERFORMANCE.md, "Cheap runs"). An issue
    # opened after this read is newer than this success and stays open, as it would have
    # after resolve's own read.
    open_causes = _open_causes(row.connection_id)
    rejected_share = 100.0 * row.failed / row.seen if row.mode != "record" and row.seen else None
    if open_causes or end is None or (
            rejected_share is not None and rejected_share > current_app.config["ISSUE_RECORDS_REJECTED_PERCENT"]):
        # Only reads so far: end them before any write. With nothing to write, runs.ended
        # goes on reading in the same transaction (its promote_waiting ends it).
        db.session.rollback()
    if open_causes & set(DISPROVED_BY_SUCCESS):
        resolve(row.connection_id, DISPROVED_BY_SUCCESS, f"run {run_id} completed", now)
    if row.mode != "record" and row.seen:
        share = 100.0 * row.failed / row.seen
        if share > current_app.config["ISSUE_RECORDS_REJECTED_PERCENT"]:
            record(row.connection_id, RECORDS_REJECTED,
                   f"run {run_id} skipped {row.failed} of {row.seen} records ({share:.0f} %)", run_id=run_id, now=now)
        elif RECORDS_REJECTED in open_causes:
            resolve(row.connection_id, (RECORDS_REJECTED,), f"run {run_id} skipped {share:.1f} % of its records", now)
    if row.mode != "record" and STALE_DATA in open_causes:
        resolve(row.connection_id, (STALE_DATA,), f"run {run_id} brought fresh data", now)


def _open_causes(connection_id):
    return set(db.session.execute(select(ConnectionIssue.cause).where(
        ConnectionIssue.connection_id == connection_id, ConnectionIssue.resolved_at.is_(None))).scalars())


def _failed_in_a_row(connection_id):
    """Failed syncs since the connection's last completed one."""
    last_ok = select(func.max(Run.id)).where(Run.connection_id == connection_id, Run.status == COMPLETED,
                                             Run.mode != "record")
    count = db.session.scalar(select(func.count()).select_from(Run).where(
        Run.connection_id == connection_id, Run.status == FAILED, Run.mode != "record",
        Run.id > func.coalesce(last_ok.scalar_subquery(), 0)))
    db.session.rollback()
    return count


def record(connection_id, cause, message, *, run_id=None, now=None):
    """One occurrence of `cause`: the open issue gains it, or a new issue opens (and is
    announced). Returns (issue id, opened). Safe with any number of processes at once."""
    now = now or utcnow()
    message = (message or LABELS[cause])[:1000]
    for _ in range(5):
        issue = db.session.execute(select(ConnectionIssue).where(
            ConnectionIssue.connection_id == connection_id, ConnectionIssue.cause == cause,
            ConnectionIssue.resolved_at.is_(None))).scalars().first()
        if issue is not None:
            run_ids = ([*issue.run_ids, run_id] if run_id else list(issue.run_ids))[-RUNS_KEPT:]
            result = db.session.execute(
                update(ConnectionIssue).where(ConnectionIssue.id == issue.id, ConnectionIssue.resolved_at.is_(None),
                                              ConnectionIssue.occurrences == issue.occurrences)
                .values(occurrences=issue.occurrences + 1, last_seen_at=now, last_message=message, run_ids=run_ids)
                .execution_options(synchronize_session=False))
            if result.rowcount == 1:
                db.session.commit()
                return issue.id, False
            db.session.rollback()  # another process counted one meanwhile: count ours on top
            continue
        issue = ConnectionIssue(connection_id=connection_id, cause=cause, opened_at=now, last_seen_at=now,
                                occurrences=1, last_message=message, run_ids=[run_id] if run_id else [])
        db.session.add(issue)
        try:
            db.session.flush()
            _announce(issue, "issue.opened")
            db.session.commit()
        except IntegrityError:
            db.session.rollback()  # opened by another process a moment ago: add to it
            continue
        log.warning("issue opened: connection=%s cause=%s %s", connection_id, cause, message)
        return issue.id, True
    raise RuntimeError(f"could not record a {cause} issue for connection {connection_id}")


def resolve(connection_id, causes, resolution, now=None):
    """Resolve the open issues of these causes; each resolved one is announced. Returns their ids."""
    now = now or utcnow()
    open_ids = db.session.execute(select(ConnectionIssue.id).where(
        ConnectionIssue.connection_id == connection_id, ConnectionIssue.cause.in_(causes),
        ConnectionIssue.resolved_at.is_(None))).scalars().all()
    resolved = []
    for issue_id in open_ids:
        result = db.session.execute(update(ConnectionIssue).where(ConnectionIssue.id == issue_id,
                                                                  ConnectionIssue.resolved_at.is_(None))
                                    .values(resolved_at=now, resolution=resolution)
                                    .execution_options(synchronize_session=False))
        if result.rowcount == 1:
            _announce(db.session.get(ConnectionIssue, issue_id), "issue.resolved")
            resolved.append(issue_id)
    db.session.commit()
    for issue_id in resolved:
        log.info("issue resolved: id=%s connection=%s (%s)", issue_id, connection_id, resolution)
    return resolved


def pause(connection_id, reason, now=None):
    result = db.session.execute(update(Connection).where(Connection.id == connection_id, Connection.paused_at.is_(None))
                                .values(paused_at=now or utcnow(), paused_reason=reason, paused_skipped=0)
                                .execution_options(synchronize_session=False))
    db.session.commit()
    if result.rowcount == 1:
        log.warning("connection %s paused: %s", connection_id, reason)
    return result.rowcount == 1


def resume(connection, *, credentials_changed, settings_changed, requested_by=None):
    """A person saved the connection: resolve what the change fixes, and resume it if it was
    paused. Returns True when it was paused (the caller, runs.resume_connection, then starts
    one run to prove the fix; its result opens a new issue if it is not fixed)."""
    what = " and ".join(w for w, changed in (("credentials", credentials_changed), ("settings", settings_changed))
                        if changed)
    if not what:
        return False
    fixed = (FIXED_BY_CREDENTIALS if credentials_changed else ()) + (FIXED_BY_SETTINGS if settings_changed else ())
    if fixed:
        resolve(connection.id, fixed, f"new {what} saved" + (f" by {requested_by}" if requested_by else ""))
    result = db.session.execute(update(Connection).where(Connection.id == connection.id,
                                                         Connection.paused_at.is_not(None))
                                .values(paused_at=None, paused_reason=None, paused_skipped=0)
                                .execution_options(synchronize_session=False))
    db.session.commit()
    db.session.refresh(connection)
    if result.rowcount == 1:
        log.info("connection %s resumed: new %s saved", connection.name, what)
    return result.rowcount == 1


def note_deferred(connection_id, message, run_id, now=None):
    """A run waits for a long rate limit: the quota is exhausted (not a failure)."""
    record(connection_id, QUOTA_EXHAUSTED, message, run_id=run_id, now=now)


# -- freshness ---------------------------------------------------------------------------


def freshness_target(settings):
    """The connection's "data no older than" target in minutes (setting freshness_minutes), or None."""
    try:
        value = float((settings or {}).get("freshness_minutes") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def data_ages(now=None):
    """{connection id: seconds since its last completed sync (None: never)}."""
    now = now or utcnow()
    rows = db.session.execute(select(Run.connection_id, func.max(Run.finished_at)).where(
        Run.status == COMPLETED, Run.mode != "record").group_by(Run.connection_id)).all()
    db.session.rollback()
    return {connection_id: (now - finished).total_seconds() for connection_id, finished in rows if finished}


def check_freshness(now=None):
    """The periodic job: open stale_data for connections whose data is older than their
    target, resolve it when fresh. Returns {"stale": [names], "fresh": [names]}."""
    now = now or utcnow()
    ages = data_ages(now)
    connections = db.session.execute(select(Connection.id, Connection.name, Connection.settings, Connection.created_at)
                                     ).all()
    db.session.rollback()
    stale, fresh = [], []
    for connection_id, name, settings, created_at in connections:
        target = freshness_target(settings)
        if target is None:
            continue
        age = ages.get(connection_id, (now - created_at).total_seconds())
        if age > target * 60:
            if not _open(connection_id, STALE_DATA):
                record(connection_id, STALE_DATA, f"the data is {_minutes(age)} old; the target is {_minutes(target * 60)}",
                       now=now)
            stale.append(name)
        elif resolve(connection_id, (STALE_DATA,), f"the data is {_minutes(age)} old again", now):
            fresh.append(name)
    return {"stale": stale, "fresh": fresh}


def _minutes(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _open(connection_id, cause):
    found = db.session.execute(select(ConnectionIssue.id).where(
        ConnectionIssue.connection_id == connection_id, ConnectionIssue.cause == cause,
        ConnectionIssue.resolved_at.is_(None))).first()
    db.session.rollback()
    return found is not None


def freshness_level(age_seconds, target_minutes):
    """green / amber / red for the dashboard: within 3/4 of the target, within it, beyond."""
    if target_minutes is None or age_seconds is None:
        return None
    share = age_seconds / (target_minutes * 60)
    return "green" if share <= 0.75 else "amber" if share <= 1 else "red"


# -- reading -----------------------------------------------------------------------------


def open_issues(connection_id=None):
    query = select(ConnectionIssue).where(ConnectionIssue.resolved_at.is_(None))
    if connection_id is not None:
        query = query.where(ConnectionIssue.connection_id == connection_id)
    return db.session.execute(query.order_by(ConnectionIssue.opened_at, ConnectionIssue.id)).scalars().all()


def open_by_cause():
    """{cause: open issues} over every connection (doctor, /readyz)."""
    rows = db.session.execute(select(ConnectionIssue.cause, func.count()).where(ConnectionIssue.resolved_at.is_(None))
                              .group_by(ConnectionIssue.cause)).all()
    return {cause: count for cause, count in rows}


# -- notifications -----------------------------------------------------------------------


def _announce(issue, event_type):
    """Publish the notification in the caller's transaction (exactly once per change)."""
    name = issue.connection.name if issue.connection else str(issue.connection_id)
    opened = event_type == "issue.opened"
    text = (f"[synchub] {name}: {LABELS[issue.cause]} ({issue.cause}): {issue.last_message}" if opened else
            f"[synchub] resolved: {name}: {LABELS[issue.cause]} ({issue.cause}); {issue.resolution}")
    notify(f"issues:{name}", event_type, {"text": text, "issue": _payload(issue, name)},
           idempotency_key=f"issue-{issue.id}-{'opened' if opened else 'resolved'}")


def _payload(issue, name):
    return {"id": issue.id, "connection": name, "cause": issue.cause, "label": LABELS[issue.cause],
            "message": issue.last_message, "occurrences": issue.occurrences,
            "opened_at": issue.opened_at.isoformat() + "Z",
            "resolved_at": issue.resolved_at.isoformat() + "Z" if issue.resolved_at else None,
            "resolution": issue.resolution}


def notify(key, event_type, payload, idempotency_key):
    """Publish a notification inside the current transaction to every enabled `notify`
    connection (webapp/connectors/notify.py; webapp/alerts.py uses this too). None when
    there is none. A destination that cannot take it is logged, never raised: an issue or
    an alert must not be lost for its notification."""
    try:
        with db.session.begin_nested():
            return outbox.publish(db.session, event_type, key, payload, idempotency_key=idempotency_key)
    except outbox.PublishError as exc:
        if str(exc).startswith("no destination maps"):
            log.debug("notification %s: no notify connection", event_type)
        else:
            log.error("notification %s not published: %s", event_type, exc)
        return None


def notify_many(events):
    """notify() for many events of one transaction: [(key, event_type, payload,
    idempotency_key)], written with a few multi-row INSERTs (outbox.publish_many). Returns
    the outbox row ids; a destination that cannot take them is logged, never raised."""
    if not events:
        return []
    try:
        with db.session.begin_nested():
            return outbox.publish_many(db.session, [(event_type, key, payload, idempotency_key)
                                                    for key, event_type, payload, idempotency_key in events])
    except outbox.PublishError as exc:
        if str(exc).startswith("no destination maps"):
            log.debug("notifications: no notify connection")
        else:
            log.error("%d notification(s) not published: %s", len(events), exc)
        return []
