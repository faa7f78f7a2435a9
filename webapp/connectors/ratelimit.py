"""Rate limiters: never more than `requests` requests in any window of `per_seconds`.

Both limiters keep a sliding log of admission times: a request is admitted only while
fewer than `requests` admissions lie in the last `per_seconds`, so the bound holds for
every window, not just aligned ones, and a burst is allowed only up to the limit.

With Redis the log is a sorted set checked and appended by one Lua script, atomically, so
every worker on every machine shares one budget per key. The script reads Redis' own
clock (TIME), so machines with skewed clocks still agree on what "the last second" is.
Without Redis (inline CLI) an in-process limiter gives the same guarantee to the threads
of this process.
"""
import collections
import os
import threading
import time

import redis

from .errors import ConfigError, TransientError

KEY_PREFIX = "synchub:ratelimit:"

# KEYS[1] the log; ARGV: limit, window in microseconds, a unique member.
# Returns {0, admitted_at_us} when admitted, else {wait_us, now_us}.
_SLIDING_LOG = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000) + 1000)
  return {0, now}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + window - now
if wait < 1 then wait = 1 end
return {wait, now}
"""


def make_rate_limiter(redis_client, key, rate_limit):
    """A limiter for `key` allowing rate_limit = (requests, per_seconds)."""
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
    def __init__(self, redis_client, key, requests, per_seconds, sleep=time.sleep):
        self.key = KEY_PREFIX + key
        self.requests = requests
        self.per_seconds = per_seconds
        self._window_us = int(per_seconds * 1_000_000)
        self._script = redis_client.register_script(_SLIDING_LOG)
        self._sleep = sleep
        self._prefix = os.urandom(6).hex()
        self._counter = 0
        self._counter_lock = threading.Lock()

    def acquire(self):
        """Block until a request may be sent; return its admission time (Redis clock, seconds)."""
        with self._counter_lock:
            self._counter += 1
            member = f"{self._prefix}:{self._counter}"
        while True:
            try:
                wait_us, now_us = self._script(keys=[self.key], args=[self.requests, self._window_us, member])
            except redis.RedisError as exc:
                # Without the shared log no worker may assume it has budget; the run retries.
                raise TransientError(f"rate limiter unavailable: Redis error ({type(exc).__name__})") from None
            if wait_us == 0:
                return now_us / 1_000_000
            self._sleep(wait_us / 1_000_000)


class LocalRateLimiter:
    def __init__(self, requests, per_seconds, sleep=time.sleep, clock=time.monotonic):
        self.requests = requests
        self.per_seconds = per_seconds
        self._log = collections.deque()
        self._lock = threading.Lock()
        self._sleep = sleep
        self._clock = clock

    def acquire(self):
        """Block until a request may be sent; return its admission time (monotonic seconds)."""
        while True:
            with self._lock:
                now = self._clock()
                while self._log and self._log[0] <= now - self.per_seconds:
                    self._log.popleft()
                if len(self._log) < self.requests:
                    self._log.append(now)
                    return now
                wait = self._log[0] + self.per_seconds - now
            self._sleep(max(wait, 1e-6))


_local_limiters = {}
_local_lock = threading.Lock()
