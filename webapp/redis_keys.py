"""Every Redis key synchub names, under the install's prefix (setting REDIS_PREFIX,
environment SYNCHUB_REDIS_PREFIX, default "synchub"), so that two installs can share one
Redis without reading or taking each other's keys, queues or jobs.

    <prefix>:progress:<run id>                a run's live progress snapshot, and the channel
                                              its updates are published on (webapp/progress.py)
    <prefix>:metrics                          counters shared by every process (webapp/metrics.py)
    <prefix>:ratelimit:<limit key>            a provider rate limit's request log (connectors)
    <prefix>:login-failures:<address>         the admin login brake per client address
    <prefix>:supervisors:leader               the supervisors' leader lease (scheduler/leader.py)
    <prefix>:supervisors:heartbeat:<name>     a supervisor's heartbeat
    <prefix>:webhooks:rejected                counts of refused webhook requests
    <prefix>:outbox:...                       the outbox's sending jobs and breakers (webapp/outbox)
    RQ queues and job ids                     named by webapp/queue.py with the same prefix

The database row is the truth; these keys carry queues, locks, budgets and live views.
"""
from flask import current_app


def prefix():
    return current_app.config["REDIS_PREFIX"]


def key(*parts, prefix_=None):
    """"<prefix>:<part>:<part>...". `prefix_` for code that holds the settings but may run
    without an app context (a connector's Services)."""
    return ":".join((prefix_ if prefix_ is not None else prefix(), *(str(part) for part in parts)))
