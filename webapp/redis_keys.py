"""Every Redis key synchub names, under the install's prefix (setting REDIS_PREFIX,
environment SYNCHUB_REDIS_PREFIX, default "synchub"), so that two installs can share one
Redis without reading or taking each other's keys, queues or jobs.

    <prefix>:progress:<run id>                a run's live progress snapshot (webapp/progress.py)
    <prefix>:progress:db<N>:<run id>          the channel its updates are published on; Pub/Sub
                                              ignores database numbers, so the name holds it
    <prefix>:metrics                          counters shared by every process (webapp/metrics.py)
    <prefix>:ratelimit:<limit key>            a provider rate limit's request log (connectors)
    <prefix>:login-failures:<address>         the admin login brake per client address
    <prefix>:admin-session-ended:<session id> an admin session signed out (webapp/admin/auth.py)
    <prefix>:api-auth-failures:<address>      the API's brake on wrong tokens and cron secrets
    <prefix>:supervisors:leader               the supervisors' leader lease (scheduler/leader.py)
    <prefix>:supervisors:heartbeat:<name>     a supervisor's heartbeat
    <prefix>:webhooks:rejected                counts of refused webhook requests
    <prefix>:outbox:...                       the outbox's sending jobs and breakers (webapp/outbox)
    <prefix>:webhooks:dispatch-kick           the pending webhook dispatch job (webapp/webhooks/dispatch.py)
    <prefix>:maintenance:<function>           an operator's periodic job (webapp/periodic.py)
    <prefix>:<queue name>                     RQ queues; RQ job ids are "<prefix>-<kind>-..." (webapp/queue.py)

The database row is the truth; these keys carry queues, locks, budgets and live views.
"""
import re

from flask import current_app

# RQ allows only these characters in a job id, and job ids start with the prefix.
_PREFIX_RULE = re.compile(r"[A-Za-z0-9_-]+")


def prefix():
    """This install's prefix."""
    return checked(current_app.config["REDIS_PREFIX"])


def checked(value):
    if not _PREFIX_RULE.fullmatch(value or ""):
        raise ValueError(f"The Redis prefix {value!r} (SYNCHUB_REDIS_PREFIX) may hold only letters, digits, '-' and '_'.")
    return value


def key(*parts, prefix_=None):
    """"<prefix>:<part>:<part>..." (key("a", "b") -> "synchub:a:b"). `prefix_` for code that
    holds the settings but may run without an app context (a connector's Services)."""
    return ":".join((prefix() if prefix_ is None else checked(prefix_), *(str(part) for part in parts)))
