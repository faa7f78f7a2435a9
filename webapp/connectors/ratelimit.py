"""Rate limiters: never more than `requests` requests in any window of `per_seconds`.

Both limiters keep a sliding log of admission times: a request is admitted only while
fewer than `requests` admissions lie in the last `per_seconds`, so the bound holds for
every window, not just aligned ones, and a burst is allowed only up to the limit.

With Redis the log is a sorted set checked and appended by one Lua script, atomically, so
every worker on every machine shares one budget per key. The script reads Redis' own
clock (TIME), so machines with skewed clocks still agree on what "the last second" is.
Without Redis (inline CLI) an in-process limiter gives the same guarantee to the threads
of this process.

Our log only knows our own requests; an account's quota is often shared with other apps.
`observe_remaining(n)` takes what the provider said is left of its window (its
X-RateLimit-Remaining) and, when that is less than our own log leaves free, adds entries
for the difference: requests somebody else made, counted like ours for a window from now.
So every worker of the account slows down before the provider's 429, not after it; alone
on the account the provider never reports less than our log leaves free, and nothing changes.

`acquire()` bounds admissions; the provider counts arrivals, and a request can arrive any
time after its admission (a descheduled process, a slow connect). `slot()` bounds the
arrivals themselves: the entry stays in the log while the request is in flight and then
takes the time its answer came back, so a slot is free again only a full window after
the provider can have seen the request. Then for any n + 1 requests, the last admitted
was admitted while the other n entries were in the log (each stays until a window after
its arrival), so no window holds n + 1 arrivals, whatever the delays.
"""
import contextlib
import collections
import os
import threading
import time

import redis

from .errors import ConfigError, TransientError
from ..error_words import describe


# KEYS[1] the log; ARGV: limit, window in microseconds, how long (us) an admitted entry
# counts as sent now (0, or a bound on the request's time in flight: the entry is settled at
# the answer, see _SETTLE), how many members may be admitted ahead (a), how long (us) those
# count as sent now, how many members to settle (s); then a unique member, the a members
# ahead, the s members whose answers are back (settled here first, as _SETTLE would, a little
# later: see RedisRateLimiter.slot), and members admitted ahead and never used (removed).
# Members ahead are admitted only while the log stays under half the limit. Returns
# {0, admitted_at_us, entries in the log now, members admitted ahead} when admitted, else
# {wait_us, now_us}.
_SLIDING_LOG = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local ahead = tonumber(ARGV[4])
local hold_ahead = tonumber(ARGV[5])
local settled = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local first_settled = 8 + ahead
for i = first_settled, first_settled + settled - 1 do
  redis.call('ZADD', key, 'XX', now, ARGV[i])
end
for i = first_settled + settled, #ARGV do
  redis.call('ZREM', key, ARGV[i])
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local card = redis.call('ZCARD', key)
if card < limit then
  redis.call('ZADD', key, now + hold, ARGV[7])
  card = card + 1
  local taken = 0
  while taken < ahead and (card + 1) * 2 <= limit do
    redis.call('ZADD', key, now + hold_ahead, ARGV[8 + taken])
    taken = taken + 1
    card = card + 1
  end
  if taken > 0 then hold = math.max(hold, hold_ahead) end
  redis.call('PEXPIRE', key, math.ceil((window + hold) / 1000) + 1000)
  return {0, now, card, taken}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
-- An entry in flight frees a window after its answer, which may come any moment.
if wait > window then wait = window end
if wait < 1 then wait = 1 end
return {wait, now}
"""

# KEYS[1] the log; ARGV: window in microseconds, how many members to settle (s), then those
# members, then members admitted ahead and never used (removed). The settled ones' answers
# are back: each entry counts from now (Redis' clock), which is after the provider received
# the request.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local settled = tonumber(ARGV[2])
local changed = 0
for i = 3, 2 + settled do
  changed = changed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now, ARGV[i])
end
for i = 3 + settled, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
if changed > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return now
"""

# KEYS[1] the log; ARGV: limit, window in microseconds, what the provider says remains, a
# member prefix. Returns how many entries were added for requests that were not ours.
_OBSERVE = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local remaining = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local missing = (limit - redis.call('ZCARD', key)) - math.max(remaining, 0)
for i = 1, missing do
  redis.call('ZADD', key, now, ARGV[4] .. ':' .. i)
end
if missing > 0 then
  redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1000)
  return missing
end
return 0
"""


def remaining_in_window(headers):
    """What an answer says is left of the provider's current window (X-RateLimit-Remaining:
    HighLevel, Zoom, Loops), or None. Daily counters are another window: not this one."""
    value = (headers or {}).get("X-RateLimit-Remaining")
    try:
        return max(0, int(str(value).strip())) if value is not None else None
    except ValueError:
        return None


def make_rate_limiter(redis_client, key, rate_limit):
    """A limiter for `key` allowing rate_limit = (requests, per_seconds). With Redis, `key`
    is the Redis key of its log (Services.rate_limiter puts it under the install's prefix)."""
    requests, per_seconds = _parse_rate(rate_limit)
    if redis_client is not None:
        return RedisRateLimiter(redis_client, key, requests, per_seconds)
    # One budget per key in this process, whichever connector instance asks for it.
    with _local_lock:
        limiter = _local_limiters.get((key, requests, per_seconds))
        if limiter is None:
            limiter = _local_limiters[(key, requests, per_seconds)] = LocalRateLimiter(requests, per_seconds)
        return limiter


def _parse_rate(rate_limit):
    try:
        requests, per_seconds = rate_limit
        requests, per_seconds = int(requests), float(per_seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"rate limit must be [requests, seconds], got {rate_limit!r}") from None
    if requests < 1 or per_seconds <= 0:
        raise ConfigError(f"rate limit must allow at least 1 request in a positive window, got {rate_limit!r}")
    return requests, per_seconds


class RedisRateLimiter:
    # Far from its limit, an admission also admits a few members ahead for this process's next
    # slots: one Redis round trip for several requests, where it was the dearest part of an
    # outbox delivery (docs/PERFORMANCE.md, "Slots admitted ahead"). Only with at least 100
    # requests a window (below that a round trip a request costs nothing that matters), at most
    # one per 100, never more than AHEAD, and only while the log stays under half the limit:
    # near the limit every slot is admitted on its own, as before.
    AHEAD = 7
    # How much longer than the request's own bound a member admitted ahead counts as in flight:
    # the time it may wait here for its request. One not used by then is never used, and is
    # removed from the log by the next round trip.
    AHEAD_SECONDS = 0.5

    def __init__(self, redis_client, key, requests, per_seconds, sleep=time.sleep, clock=time.monotonic):
        self.key = key
        self.requests = requests
        self.per_seconds = per_seconds
        self._window_us = int(per_seconds * 1_000_000)
        self._script = redis_client.register_script(_SLIDING_LOG)
        self._settle = redis_client.register_script(_SETTLE)
        self._observe = redis_client.register_script(_OBSERVE)
        self._sleep = sleep
        self._clock = clock
        self._prefix = os.urandom(6).hex()
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._unsettled = []  # members of slots whose answers are back, for the next admission
        self._ahead_count = min(self.AHEAD, requests // 100)
        self._ahead = collections.deque()  # (member, reserved until (our clock)): admitted ahead
        self._ahead_in_window = 0  # entries in the log when the members ahead were admitted
        self._unused = []  # members admitted ahead that lapsed unused, to remove from the log

    def acquire(self):
        """Block until a request may be sent; return its admission time (Redis clock, seconds)."""
        return self._acquire(self._member(), 0)[1]

    @contextlib.contextmanager
    def slot(self, max_in_flight):
        """Hold a slot while the request in the block is in flight, and for a window after
        its answer. `max_in_flight` (seconds) bounds how long a slot stays taken if this
        process dies before the answer.

        While the window is less than half full, the settlement (the entry counts from the
        answer) is not a round trip of its own: it rides on this limiter's next admission, in
        the same script, so a request costs one Redis round trip instead of two. Settled a
        little later, an entry only frees its place a little later, which never lets more
        through. `settle()` sends what is left when no admission follows (the sender calls it
        after each batch, via the connector's `settle_rate_limit`, and at its end). Near the
        limit every slot is settled at its answer, as a waiting request (here or in another
        process) needs the place back a window after the answer, not after our next request.

        A slot may also come from the members admitted ahead by an earlier admission (see
        AHEAD): such a member counts as in flight from its admission until its answer is
        settled, like any other, and is used only while what it reserved still covers this
        request's whole `max_in_flight`."""
        hold_us = int(max_in_flight * 1_000_000)
        member, in_window = self._take_ahead(hold_us)
        if member is None:
            member, _, in_window = self._acquire(self._member(), hold_us, ahead=self._ahead_count)
        try:
            yield
        finally:
            with self._counter_lock:
                self._unsettled.append(member)
            if in_window * 2 >= self.requests:
                self.settle()

    def settle(self):
        """Settle the slots whose answers are back and that no admission has settled yet, and
        give back the members admitted ahead that no request used."""
        with self._counter_lock:
            members, self._unsettled = self._unsettled, []
            unused = self._unused + [member for member, _ in self._ahead]
            self._unused, self._ahead = [], collections.deque()
        if not members and not unused:
            return
        try:
            self._settle(keys=[self.key], args=[self._window_us, len(members), *members, *unused])
        except redis.RedisError:
            pass  # the entries lapse max_in_flight after their admission

    def observe_remaining(self, remaining):
        """The provider says `remaining` requests are left in its window: count the ones our
        log does not know of (see the module docstring). Returns how many were added."""
        try:
            return self._observe(keys=[self.key], args=[self.requests, self._window_us, int(remaining),
                                                         f"{self._member()}:seen"])
        except redis.RedisError:
            return 0  # advice only: the limiter's own log still bounds us

    def _member(self):
        with self._counter_lock:
            self._counter += 1
            return f"{self._prefix}:{self._counter}"

    def _take_ahead(self, hold_us):
        """(a member admitted ahead that still covers a request of `hold_us`, the log's size
        at its admission), or (None, None)."""
        now = self._clock()
        with self._counter_lock:
            while self._ahead:
                member, reserved_until = self._ahead.popleft()
                if now + hold_us / 1_000_000 <= reserved_until:
                    return member, self._ahead_in_window
                self._unused.append(member)
        return None, None

    def _acquire(self, member, hold_us, ahead=0):
        """Block until admitted: (member, admission time (Redis clock, seconds), entries in
        the log with this one). `ahead`: how many more members to admit for later slots, if
        the log has room (see AHEAD)."""
        hold_ahead_us = hold_us + int(self.AHEAD_SECONDS * 1_000_000)
        spare = [self._member() for _ in range(ahead)]
        while True:
            with self._counter_lock:
                answered, self._unsettled = self._unsettled, []
                unused, self._unused = self._unused, []
            # Before the round trip: Redis admits no earlier than this, so a member ahead is
            # never used past what its admission reserved.
            asked = self._clock()
            try:
                wait_us, now_us, *admitted = self._script(
                    keys=[self.key], args=[self.requests, self._window_us, hold_us, ahead, hold_ahead_us,
                                           len(answered), member, *spare, *answered, *unused])
            except redis.RedisError as exc:
                # Without the shared log no worker may assume it has budget; the run retries.
                raise TransientError(f"rate limiter unavailable: Redis error ({describe(exc)})") from None
            if wait_us == 0:
                in_window, taken = admitted
                if taken:
                    reserved_until = asked + hold_ahead_us / 1_000_000
                    with self._counter_lock:
                        self._ahead.extend((m, reserved_until) for m in spare[:taken])
                        self._ahead_in_window = in_window
                return member, now_us / 1_000_000, in_window
            self._sleep(wait_us / 1_000_000)


class LocalRateLimiter:
    def __init__(self, requests, per_seconds, sleep=time.sleep, clock=time.monotonic):
        self.requests = requests
        self.per_seconds = per_seconds
        self._log = []  # [time it counts from]; a slot in flight counts from the future
        self._lock = threading.Lock()
        self._sleep = sleep
        self._clock = clock

    def acquire(self):
        """Block until a request may be sent; return its admission time (monotonic seconds)."""
        return self._acquire(0.0)[0]

    @contextlib.contextmanager
    def slot(self, max_in_flight):
        """As RedisRateLimiter.slot, for the threads of this process."""
        admitted, entry = self._acquire(max_in_flight)
        try:
            yield
        finally:
            with self._lock:
                for i, held in enumerate(self._log):
                    if held is entry:
                        self._log[i] = [self._clock()]
                        break

    def settle(self):
        """Nothing to do: this limiter settles each slot at its answer (no round trip)."""

    def observe_remaining(self, remaining):
        """As RedisRateLimiter.observe_remaining, for the threads of this process."""
        with self._lock:
            now = self._clock()
            self._log = [e for e in self._log if e[0] > now - self.per_seconds]
            missing = (self.requests - len(self._log)) - max(int(remaining), 0)
            self._log.extend([now] for _ in range(max(missing, 0)))
            return max(missing, 0)

    def _acquire(self, hold):
        while True:
            with self._lock:
                now = self._clock()
                self._log = [e for e in self._log if e[0] > now - self.per_seconds]
                if len(self._log) < self.requests:
                    entry = [now + hold]
                    self._log.append(entry)
                    return now, entry
                wait = min(min(e[0] for e in self._log) + self.per_seconds - now, self.per_seconds)
            self._sleep(max(wait, 1e-6))


_local_limiters = {}
_local_lock = threading.Lock()
