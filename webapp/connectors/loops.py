"""Loops (email marketing): an outbound destination for the outbox (docs/OUTBOX.md).

Two provider actions, both keyed by the contact, so the outbox orders them per contact:

- `upsert_contact`: `PUT /v1/contacts/update`, which creates the contact when missing.
  Setting the same properties twice leaves the same contact, so sending it again is harmless.
- `send_event`: `POST /v1/events/send` with the outbox event's idempotency key as the
  `Idempotency-Key` header; Loops answers 409 to a reused key, which means the event was
  already sent (by an earlier attempt whose answer we never recorded).

Which app events become which actions is configuration: `settings["mappings"]` (see
docs/OUTBOX.md and webapp/connectors/mapping.py). Credentials: `{"api_key": ...}`.
The rate limit, 10 requests/s per team, is shared through Redis by every worker; the
budget is keyed by a digest of the API key, since the key identifies the team.
"""
import hashlib
import threading
import time
from urllib.parse import urlsplit

from .. import metrics
from .auth import BearerAuth
from .base import Connector, register
from .errors import ConfigError, HttpError
from .settings_spec import SettingSpec
from .http import parse_json
from .mapping import MappingError, context_for, render, rules_for

DEFAULT_BASE_URL = "https://app.loops.so/api"
# Loops allows 10 requests/s per team. A request reaches Loops some time after our limiter
# admitted it, by a varying amount (a descheduled worker, a TCP/TLS handshake), so a bound
# on admissions, even with a margin on the window, now and then landed 11 in one of Loops'
# seconds. Each request holds its slot until its answer is back (RateLimiter.slot), which
# bounds the arrivals themselves, so the window needs no margin.
DEFAULT_RATE_LIMIT = (10, 1.0)
ACTIONS = ("upsert_contact", "send_event")
_RULE_FIELDS = {
    "upsert_contact": {"action", "email", "user_id", "properties", "key"},
    "send_event": {"action", "email", "user_id", "event", "event_properties", "properties", "key"},
}


@register
class LoopsConnector(Connector):
    name = "loops"
    title = "Loops (email marketing, outbound)"
    streams = ()
    supported_modes = ()
    settings_spec = (
        SettingSpec("mappings", "json", None, "app event type -> rules (docs/OUTBOX.md)"),
        SettingSpec("base_url", "url", DEFAULT_BASE_URL, "the Loops API", advanced=True),
        SettingSpec("rate_limit", "list", None, "[requests, seconds]: at most that many requests per window", advanced=True),
    )
    credential_fields = ("api_key",)
    # Loops answers these when the request itself is wrong: retrying cannot help.
    permanent_statuses = (400, 409, 413, 422)
    # send() may be called from several threads at once: the outbox sender sends a batch's
    # rows (distinct keys) side by side (docs/OUTBOX.md, "Sending"). Its HTTP session is
    # made once, under a lock; the shared limiter admits each request.
    concurrent_sends = True
    _client_lock = threading.Lock()

    def read_page(self, stream, request, state):
        raise ConfigError("Loops is an outbound destination: it has no streams to sync")

    # -- publishing: app event -> provider actions (no network) ---------------------------

    @classmethod
    def plan(cls, settings, event_type, key, payload):
        """The provider actions for one app event: [{"key", "payload"}]. [] when unmapped.
        Raises MappingError when the event lacks a field a rule needs."""
        actions = []
        context = context_for(event_type, key, payload)
        for index, rule in enumerate(rules_for((settings or {}).get("mappings"), event_type), start=1):
            where = f"mappings[{event_type!r}] rule {index}"
            action = rule.get("action")
            if action not in ACTIONS:
                raise MappingError(f"{where}: action must be one of {', '.join(ACTIONS)}, not {action!r}")
            unknown = set(rule) - _RULE_FIELDS[action]
            if unknown:
                raise MappingError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            rendered = render(rule, context, where)
            actions.append(_action(action, rendered, where))
        return actions

    @classmethod
    def validate_mappings(cls, mappings):
        """Check the rules' shape (not their fields, which depend on each event's payload)."""
        if not isinstance(mappings, dict):
            raise MappingError("mappings must be an object of event type -> list of rules")
        for event_type in mappings:
            for index, rule in enumerate(rules_for(mappings, event_type), start=1):
                if rule.get("action") not in ACTIONS:
                    raise MappingError(f"mappings[{event_type!r}] rule {index}: action must be one of "
                                       f"{', '.join(ACTIONS)}")
                unknown = set(rule) - _RULE_FIELDS[rule["action"]]
                if unknown:
                    raise MappingError(f"mappings[{event_type!r}] rule {index}: unknown field(s) "
                                       f"{', '.join(sorted(unknown))}")

    # -- sending: one action, one request ----------------------------------------------

    def send(self, action, idempotency_key):
        """Send one action. Returns a short note for the log; raises SyncError classes."""
        kind, body = action.get("action"), action.get("body")
        if kind not in ACTIONS or not isinstance(body, dict):
            raise MappingError(f"not a Loops action: {kind!r}")
        headers = {"Idempotency-Key": idempotency_key}
        method, path = ("PUT", "/v1/contacts/update") if kind == "upsert_contact" else ("POST", "/v1/events/send")
        client = self._client()
        try:
            # One request per call (max_retries=0), so the slot covers exactly it.
            asked = time.monotonic()
            with self._limiter.slot(self._max_in_flight):
                waited = time.monotonic() - asked
                response = client.request(method, path, json=body, headers=headers)
            if waited > 0.001:  # what HttpClient reports for the limiters it holds itself
                metrics.inc("rate_limit_wait_seconds", waited, key=urlsplit(client.base_url).netloc.rsplit("@", 1)[-1])
            answer = parse_json(response)
        except HttpError as exc:
            # A reused Idempotency-Key: an earlier attempt got through and its answer was lost.
            if exc.status == 409 and (kind == "send_event" or "dempotency" in str(exc)):
                return "already delivered (Loops had seen this Idempotency-Key)"
            raise
        if isinstance(answer, dict) and answer.get("success") is False:
            raise ConfigError(f"Loops refused {kind}: {str(answer.get('message') or 'no reason given')[:200]}")
        return "contact upserted" if kind == "upsert_contact" else "event sent"

    def _client(self):
        if getattr(self, "_http", None) is not None:
            return self._http
        with self._client_lock:
            return self._make_client()

    def _make_client(self):
        if getattr(self, "_http", None) is None:
            api_key = self.credentials.get("api_key")
            if not api_key:
                raise ConfigError("the Loops connection has no api_key credential")
            team = hashlib.sha256(api_key.encode()).hexdigest()[:16]
            timeout = float(self.services.config["OUTBOX_HTTP_TIMEOUT_SECONDS"])
            # Connect and read each get the timeout; past that a dead worker's slot lapses.
            self._max_in_flight = 2 * timeout + 1
            self._limiter = self.services.rate_limiter(f"loops:{team}",
                                                       tuple(self.settings.get("rate_limit") or DEFAULT_RATE_LIMIT))
            self._http = self.services.http(
                self.settings.get("base_url") or DEFAULT_BASE_URL,
                auth=BearerAuth(api_key),
                rate_limit=None,  # ours, around each request: see send
                # The outbox retries with backoff recorded in the database, never in a worker.
                max_retries=0,
                timeout=timeout,
            )
        return self._http

    def settle_rate_limit(self):
        """Settle the limiter's slots whose answers are back: each slot's settlement rides on
        the next admission (webapp/connectors/ratelimit.py, slot), so a sender calls this
        when it stops sending for a while (after a batch) and close() at the end."""
        if getattr(self, "_http", None) is not None:
            self._limiter.settle()

    def close(self):
        if getattr(self, "_http", None) is not None:
            self._limiter.settle()
            self._http.close()
            self._http = None


def _action(kind, rule, where):
    email, user_id = rule.get("email"), rule.get("user_id")
    if email is not None and (not isinstance(email, str) or "@" not in email):
        raise MappingError(f"{where}: email {email!r} is not an email address")
    if not email and not user_id:
        raise MappingError(f"{where}: needs an email (or a user_id)")
    properties = rule.get("properties") or {}
    if not isinstance(properties, dict):
        raise MappingError(f"{where}: properties must be an object")
    body = {}
    if email:
        body["email"] = email
    if user_id:
        body["userId"] = str(user_id)
    if kind == "send_event":
        if not isinstance(rule.get("event"), str) or not rule["event"]:
            raise MappingError(f"{where}: send_event needs an event name")
        body["eventName"] = rule["event"]
        event_properties = rule.get("event_properties") or {}
        if not isinstance(event_properties, dict):
            raise MappingError(f"{where}: event_properties must be an object")
        if event_properties:
            body["eventProperties"] = event_properties
    body.update({name: value for name, value in properties.items() if name not in ("email", "userId")})
    key = rule.get("key") or (email.lower() if email else f"userId:{user_id}")
    return {"key": str(key)[:255], "payload": {"action": kind, "body": body}}
