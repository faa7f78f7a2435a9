"""Leadership: a Redis lease with expiry, renewed while leading.

Any number of supervisors may run; the one holding the lease key leads. The holder
renews it every tick; if it dies, the key expires after LEADER_TTL_SECONDS and the next
supervisor to tick takes it, so a dead leader is replaced within TTL + one tick.

The lease is an optimisation, not the safety net: every change the leader makes is a
conditional update in the database, so a leader that lost its lease mid-tick (a pause,
a partition) can at worst repeat work that the conditions then refuse.
"""
import logging
import secrets
import time

import redis

from webapp import redis_keys

log = logging.getLogger(__name__)



def leader_key(prefix=None):
    """The lease's key: "<prefix>:supervisors:leader" (the app's prefix when not given)."""
    return redis_keys.key("supervisors", "leader", prefix_=prefix)

# Take the lease if free, renew it if ours: one atomic step.
_ACQUIRE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, client, name, ttl_seconds, key=None, monotonic=time.monotonic):
        self.client = client
        self.name = name
        # A token per process: a restarted supervisor with the same name must win the lease
        # fairly, not inherit the dead one's.
        self.token = f"{name}#{secrets.token_hex(4)}"
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.key = key or leader_key()
        self.monotonic = monotonic
        self._held_until = 0.0
        self._acquire_or_renew = client.register_script(_ACQUIRE_OR_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire_or_renew(self):
        """True when this process holds the lease afterwards. Redis errors mean: not leading."""
        started = self.monotonic()
        try:
            ok = bool(self._acquire_or_renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        except redis.RedisError as exc:
            log.warning("leader: lease check failed, not leading: %s", type(exc).__name__)
            ok = False
        # Count from before the call: the key may have been set at any moment during it.
        self._held_until = started + self.ttl_ms / 1000 if ok else 0.0
        return ok

    @property
    def held(self):
        """Held according to our own clock: renewed less than a TTL ago."""
        return self.monotonic() < self._held_until

    def release(self):
        self._held_until = 0.0
        try:
            return bool(self._release(keys=[self.key], args=[self.token]))
        except redis.RedisError:
            return False  # it expires by itself


def holder(client, key=None):
    """The name of the supervisor holding the lease, or None."""
    try:
        value = client.get(key or leader_key())
    except redis.RedisError:
        return None
    return value.decode().rsplit("#", 1)[0] if value else None
