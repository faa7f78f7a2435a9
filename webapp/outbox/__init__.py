"""The outbox: durable outbound pushes (docs/OUTBOX.md). One module per job:

    statuses.py   the life of a row (pending, processing, done, dead)
    publish.py    publish in the caller's transaction; the after-commit hook
    enqueue.py    asking the workers for a drain (real-time attempt, periodic drain)
    claim.py      claim with a lease, per-key order; settle: done, failed (backoff), release
    breaker.py    the circuit breaker per destination, in Redis
    queries.py    counts, lists, retry, discard, a row as JSON (admin page, API, CLI)
    views.py      the admin page (/admin/outbox), templates/outbox/
    cli.py        `flask outbox drain|list|retry|discard`

The loop that claims rows and sends them is worker/outbox_sender.py.

Other areas and apps use what is imported here: `from webapp import outbox`, then
`outbox.publish(...)`, `outbox.enqueue_drain()`; the rest is imported from its module.
"""
from .enqueue import enqueue_drain, request_sending
from .publish import PublishError, Published, publish, publish_many
from .statuses import ACTIVE, DEAD, DONE, PENDING, PROCESSING

__all__ = ["ACTIVE", "DEAD", "DONE", "PENDING", "PROCESSING", "PublishError", "Published", "enqueue_drain",
           "publish", "publish_many", "request_sending"]
