"""A connector that needs no network: deterministic generated records, so a fresh
machine has something real to sync, and tests can exercise the engine without HTTP.

Settings: records (count), page_size, latency_ms (per page), seed, version (bump to
change every record's content), bad_every (every Nth record is malformed), and
injected faults for demos and tests: fail_at_offset (a transient outage when that offset
is read), auth_fail (the provider rejects our credentials), retry_after_s (the provider
answers "rate limited, retry after N seconds" once, when offset retry_after_offset, 0 by
default, is read; "once" per connection and N, remembered in Redis).
"""
import random
import time
from datetime import datetime, timedelta

from .base import Connector, Page, Stream, register
from .. import redis_keys
from .errors import AuthError, QuotaExhausted, TransientError
from .settings_spec import SettingSpec

_EPOCH = datetime(2026, 1, 1)


@register
class SandboxConnector(Connector):
    name = "sandbox"
    title = "Sandbox (generated data, no network)"
    streams = (Stream("items", primary_key="id", cursor_field="updated_at"),)
    settings_spec = (
        SettingSpec("records", "int", 1000, "how many records the stream has", minimum=0, maximum=10_000_000),
        SettingSpec("page_size", "int", 100, "records per page", minimum=1, maximum=10_000),
        SettingSpec("latency_ms", "int", 0, "a pause before each page, in milliseconds", minimum=0, maximum=60_000),
        SettingSpec("seed", "int", 1, "changes every generated value", advanced=True),
        SettingSpec("version", "int", 0, "bump to change every record's content", minimum=0, advanced=True),
        SettingSpec("bad_every", "int", 0, "every Nth record is malformed (0: none)", minimum=0, advanced=True),
        SettingSpec("fail_at_offset", "int", None, "a transient outage (503) when this offset is read",
                    minimum=0, fault=True),
        SettingSpec("auth_fail", "bool", False, "the provider rejects the credentials (401)", fault=True),
        SettingSpec("retry_after_s", "int", None, "rate limited once (HTTP 429) at retry_after_offset: "
                    "retry after N seconds", minimum=0, fault=True),
        SettingSpec("retry_after_offset", "int", 0, "the offset where retry_after_s strikes", minimum=0, fault=True),
    )
    credential_fields = ("webhook_secret",)
    # Webhooks in the generic Standard Webhooks scheme: {"type": "item.updated" | "item.created"
    # | "item.deleted", "data": {"id": "item-0000042"}}.
    webhook_scheme = "standard"

    def _setting(self, key, default):
        return int(self.settings.get(key, default))

    def _record(self, i):
        version = self._setting("version", 0)
        bad_every = self._setting("bad_every", 0)
        if bad_every and (i + 1) % bad_every == 0:
            return {"name": f"broken item {i}"}  # no id: the engine must skip and log it
        rng = random.Random(f"{self._setting('seed', 1)}:{i}:{version}")  # noqa: S311  made-up demo records, seeded to be repeatable
        updated = _EPOCH + timedelta(seconds=i + version * 1_000_000)
        return {
            "id": f"item-{i:07d}",
            "name": f"Item {i}",
            "price": round(rng.uniform(1, 500), 2),
            "stock": rng.randint(0, 1000),
            "version": version,
            "updated_at": updated.isoformat() + "Z",
        }

    def webhook_events(self, payload):
        kind, data = payload.get("type"), payload.get("data") or {}
        if not (isinstance(kind, str) and kind.startswith("item.") and isinstance(data, dict) and data.get("id")):
            return []
        return [("items", str(data["id"]), kind == "item.deleted")]

    # Without Redis (unit tests) "once" is per process.
    _rate_limited_once = set()

    def _rate_limit_once(self, offset):
        """The retry_after_s fault: the first read of retry_after_offset is refused, as a
        provider whose quota is spent answers, with a Retry-After longer than a worker waits
        (QuotaExhausted, like the shared HTTP client raises)."""
        seconds = self.settings.get("retry_after_s")
        if not seconds or offset != self._setting("retry_after_offset", 0):
            return
        key = redis_keys.key("sandbox", "retry_after", self.services.connection_id, seconds)
        redis = self.services.redis
        first = (redis.set(key, 1, nx=True, ex=7 * 86400) if redis is not None
                 else key not in self._rate_limited_once)
        self._rate_limited_once.add(key)
        if first:
            raise QuotaExhausted(f"sandbox: rate limited at offset {offset} (HTTP 429), Retry-After {int(seconds)}s",
                                 retry_after=float(seconds))

    def read_records(self, stream, record_ids):
        """Its bulk endpoint: any number of records for one pause of `latency_ms`."""
        count = self._setting("records", 1000)
        latency = self._setting("latency_ms", 0)
        if latency:
            time.sleep(latency / 1000)
        pages = {}
        for record_id in record_ids:
            number = str(record_id).rsplit("-", 1)[-1]
            i = int(number) if number.isdigit() else count  # an id it never made: gone
            pages[record_id] = Page([self._record(i)] if i < count else [], None, total=1)
        return pages

    def read_page(self, stream, request, state):
        count = self._setting("records", 1000)
        page_size = self._setting("page_size", 100)
        latency = self._setting("latency_ms", 0)
        if latency:
            time.sleep(latency / 1000)
        if request.mode == "record":
            i = int(str(request.params["record_id"]).rsplit("-", 1)[-1])
            return Page([self._record(i)] if i < count else [], None, total=1)
        offset = (state or {}).get("offset", 0)
        if self.settings.get("auth_fail"):
            raise AuthError("sandbox: the provider rejected the credentials (401)")
        if self.settings.get("fail_at_offset") is not None and offset == int(self.settings["fail_at_offset"]):
            raise TransientError(f"sandbox: injected outage at offset {offset} (503)")
        self._rate_limit_once(offset)
        records = [self._record(i) for i in range(offset, min(offset + page_size, count))]
        # Records are generated in updated_at order, so cursors and ranges are simple filters.
        if request.mode == "incremental" and request.cursor:
            records = [r for r in records if r.get("updated_at", "") >= request.cursor]
        if request.mode == "range":
            since, until = request.params.get("since"), request.params.get("until")
            records = [r for r in records if (not since or r.get("updated_at", "") >= since)
                       and (not until or r.get("updated_at", "") < until)]
        next_offset = offset + page_size
        return Page(records, {"offset": next_offset} if next_offset < count else None, total=count)
