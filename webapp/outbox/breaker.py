"""The circuit breaker: one per destination, in Redis so every worker on every machine
agrees (docs/OUTBOX.md, "Failures").

    closed --`threshold` provider failures in a row--> open (cooldown)
    open --cooldown over--> half-open: one worker wins a short probe lock and sends one row
    half-open --probe succeeded--> closed
    half-open --probe failed--> open again, the cooldown doubled (up to a maximum)

While open, no worker claims the destination's rows, so their attempts are not burned; the
probe's row keeps its attempt too. Redis trouble never stops sending: the breaker then
counts as closed.

The sender only asks: which destinations not to claim (`blocked`), which probes a claim
did not use (`claimed`), whether a destination's requests may go out side by side
(`healthy`), whether a failed request spends its event's attempt (`request_failed`), and
until when rows of a destination whose breaker opened during the batch wait (`held_until`).
"""
import logging
import time
from datetime import timedelta

from .. import redis_keys
from ..models import utcnow

log = logging.getLogger(__name__)

# KEYS: the destination's state hash, the set of destinations with state.
# ARGV: threshold, now (seconds), first cooldown, max cooldown, destination id.
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('SADD', KEYS[2], ARGV[5])
if failures < tonumber(ARGV[1]) then return 0 end
local now = tonumber(ARGV[2])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > now then return 0 end
local cooldown = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or ARGV[3])
redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown),
           'cooldown', tostring(math.min(cooldown * 2, tonumber(ARGV[4]))))
return 1
"""


class Breaker:
    """The breakers as one sender (one drain) sees them. Not shared between threads."""

    def __init__(self, client, *, redis_prefix, threshold, cooldown, max_cooldown, probe_seconds, clock=time.time):
        self.client = client
        # "<prefix>:outbox:breaker:<destination>" (a hash; ":probe" the probe lock), and the
        # set of destinations that have one (webapp/redis_keys.py).
        self.prefix = redis_keys.key("outbox", "breaker", "", prefix_=redis_prefix)
        self.registry = redis_keys.key("outbox", "breakers", prefix_=redis_prefix)
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.probe_seconds = probe_seconds
        self.clock = clock
        self._script = client.register_script(_FAILURE) if client is not None else None
        self._probes = set()  # destinations whose probe this instance holds
        # Destinations with breaker state at the last look (or failures of our own since):
        # only those need a reset on success, which spares a Redis call per event sent.
        self._troubled = set()
        # Destinations whose breaker opened since the last claim: {id: reopen time (epoch)}.
        self._opened = {}

    @classmethod
    def from_config(cls, client, config):
        # The probe lock outlives the probe's one request, but no more: the lock of a worker
        # killed while probing keeps every other worker off the destination until it lapses.
        probe_seconds = min(float(config["OUTBOX_LEASE_SECONDS"]), 2 * float(config["OUTBOX_HTTP_TIMEOUT_SECONDS"]) + 10)
        return cls(client, redis_prefix=config["REDIS_PREFIX"], threshold=config["OUTBOX_BREAKER_THRESHOLD"],
                   cooldown=config["OUTBOX_BREAKER_COOLDOWN_SECONDS"],
                   max_cooldown=config["OUTBOX_BREAKER_MAX_COOLDOWN_SECONDS"],
                   probe_seconds=probe_seconds)

    # -- before a claim ----------------------------------------------------------------------

    def blocked(self):
        """{destination id: reopen time (epoch seconds)} of destinations not to claim now.
        A half-open destination is not blocked for the one caller that wins its probe.
        Called before each claim: what opened during the previous batch is forgotten, it is
        read from Redis again here."""
        self._opened = {}
        if self.client is None:
            return {}
        try:
            members = self.client.smembers(self.registry)
            self._troubled = {int(m) for m in members}
            blocked = {}
            now = self.clock()
            for member in members:
                destination = int(member)
                failures, open_until = self.client.hmget(self.prefix + str(destination), "failures", "open_until")
                failures, open_until = int(failures or 0), float(open_until or 0)
                if open_until > now:
                    blocked[destination] = open_until
                elif failures >= self.threshold and destination not in self._probes:
                    won = self.client.set(f"{self.prefix}{destination}:probe", 1, nx=True,
                                          px=int(self.probe_seconds * 1000))
                    if won:
                        self._probes.add(destination)
                    else:
                        blocked[destination] = now + min(self.cooldown, self.probe_seconds)
            return blocked
        except Exception as exc:
            log.warning("outbox breaker unavailable (%s): treating every destination as closed", type(exc).__name__)
            return {}

    def opened_since_claim(self):
        """Whether a breaker opened on this instance's requests since the last claim (its
        rows still to send are held back until `blocked()` is read afresh)."""
        return bool(self._opened)

    def claimed(self, destinations):
        """After a claim: hand back the probe locks won for destinations the claim took no
        row of. Held, such a lock would keep every other worker off that destination until
        this drain ends."""
        self._hand_back_probes(keep=set(destinations))

    # -- after a request -----------------------------------------------------------------------

    def success(self, destination):
        """The destination answered (a success, or a refusal of the request itself: it is up)."""
        if self.client is None or destination not in self._troubled:
            return
        self._probes.discard(destination)
        self._troubled.discard(destination)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(self.prefix + str(destination), f"{self.prefix}{destination}:probe")
            pipe.srem(self.registry, destination)
            pipe.execute()
        except Exception as exc:
            log.warning("outbox breaker unavailable (%s)", type(exc).__name__)

    def request_failed(self, destination):
        """A request failed in a way that says the destination is unwell: count it. Returns
        whether the attempt is spent: the probe's is not, or a long outage would kill the
        oldest events one probe at a time (the sender gives that row back until
        `held_until`)."""
        probe = destination in self._probes
        self.failure(destination)
        reopen = self.open_until(destination)
        if reopen is not None:
            self._opened[destination] = reopen
        return not probe

    def failure(self, destination):
        """Count a failure; True when this one opened the breaker."""
        if self._script is None:
            return False
        self._troubled.add(destination)
        try:
            opened = self._script(keys=[self.prefix + str(destination), self.registry],
                                  args=[self.threshold, self.clock(), self.cooldown, self.max_cooldown, destination])
            if destination in self._probes:
                self._probes.discard(destination)
                self.client.delete(f"{self.prefix}{destination}:probe")
            if opened:
                log.warning("outbox: destination %s keeps failing; breaker open", destination)
            return bool(opened)
        except Exception as exc:
            log.warning("outbox breaker unavailable (%s)", type(exc).__name__)
            return False

    def held_until(self, destination):
        """When rows of `destination` may be tried again, as a UTC datetime, if its breaker
        opened since the last claim (None: send them)."""
        reopen = self._opened.get(destination)
        if reopen is None:
            return None
        return utcnow() + timedelta(seconds=max(0.0, reopen - self.clock()))

    # -- reads and the end --------------------------------------------------------------------

    def open_until(self, destination):
        """When the breaker of this destination reopens for sending (None: closed)."""
        if self.client is None:
            return None
        try:
            value = self.client.hget(self.prefix + str(destination), "open_until")
        except Exception:
            return None
        value = float(value or 0)
        return value if value > self.clock() else None

    def healthy(self, destination):
        """True when this instance knows of no trouble at `destination`: no breaker state at
        the last look nor failures since, not half-open with our probe, not opened since the
        last claim. Only then may its requests go out side by side: a half-open breaker's
        probe is one request, alone (worker/outbox_sender.py)."""
        return destination not in self._troubled and destination not in self._probes and destination not in self._opened

    def probing(self, destination):
        """True while this instance holds the destination's probe (half-open)."""
        return destination in self._probes

    def close(self):
        """Hand back every probe lock still held (the drain ends)."""
        self._hand_back_probes(keep=())

    def _hand_back_probes(self, keep):
        for destination in list(self._probes):
            if destination in keep:
                continue
            self._probes.discard(destination)
            try:
                self.client.delete(f"{self.prefix}{destination}:probe")
            except Exception as exc:  # the drain is ending either way; the lock lapses by its TTL
                log.debug("probe lock of %s not handed back (%s); it lapses on its own", destination, type(exc).__name__)
