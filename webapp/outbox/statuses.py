"""The life of an outbox row (docs/OUTBOX.md):

    publish (caller's transaction) --commit--> pending --claim (lease)--> processing
    processing --sent-------------------------> done
    processing --transient failure, 429-------> pending, next_attempt_at = now + backoff
    processing --400/422, or last attempt-----> dead, with the reason
    processing --lease expired (worker died)--> claimable again
    processing --breaker open, probe failed,--> pending, the attempt given back
                 lease half spent
    pending/dead --retry (admin)--------------> pending, attempts reset
    pending/dead --discard (admin)------------> deleted
"""
from ..models import OUTBOX_STATUSES

PENDING, PROCESSING, DONE, DEAD = OUTBOX_STATUSES
# A row in one of these holds back the newer rows of its key (per-key order).
ACTIVE = (PENDING, PROCESSING)
