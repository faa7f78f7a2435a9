"""A Loops API simulator (PROVIDERS.md, Loops), faithful where deliveries break:

- auth: `Authorization: Bearer <key>`; each key belongs to a team; 401 otherwise.
- `GET /v1/api-key`, `POST /v1/contacts/create` (409 when the email or userId exists),
  `PUT /v1/contacts/update` (upsert by email or userId), `GET /v1/contacts/find`
  (a JSON array), `POST /v1/contacts/delete`, `POST /v1/events/send` (creates the contact
  when missing; `Idempotency-Key` of at most 100 characters, 409 when reused).
- errors `{"success": false, "message": ...}`; 400 for bad bodies, unknown custom
  properties when `known_properties` is set (Loops wants them created first).
- rate limit per team, `rate_limit=(10, 1)` by default: `x-ratelimit-limit` and
  `x-ratelimit-remaining` on every answer, 429 when exceeded, counted in `violations`.
- `outage = 503` answers every request with that status (a provider failing everything);
  stopping the SimulatorServer is the harder outage (connection refused).

Paths are served with or without the `/api` prefix of the real base URL. `GET
/_simulator/stats` (no auth) reports requests and rate-limit violations to a benchmark
that runs the simulator in another process.

For tests it keeps, per contact email, the sequence of effects that changed or touched the
contact, each with the Idempotency-Key of the request that caused it, so a test can check
per-key order and that no delivery took effect twice (`duplicate_effects()`).
"""
import collections
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field

from werkzeug.wrappers import Request, Response

# Built-in contact properties; anything else in a body is a custom property.
STANDARD_FIELDS = ("email", "firstName", "lastName", "source", "subscribed", "userGroup", "userId")
RESERVED = STANDARD_FIELDS + ("mailingLists",)
EVENT_FIELDS = ("eventName", "email", "userId", "eventProperties", "mailingLists")
MAX_IDEMPOTENCY_KEY = 100


@dataclass
class Effect:
    kind: str  # create | update | event | delete
    idempotency_key: str | None
    fields: dict  # what the request set (create/update) or the event (name, properties)
    at: float = field(default_factory=time.monotonic)


class Team:
    def __init__(self, name):
        self.name = name
        self.contacts = {}  # id -> contact dict
        self.idempotency_keys = set()  # keys of events/send already accepted
        self.events = []  # (email, eventName, eventProperties, idempotency_key)
        self.effects = collections.defaultdict(list)  # email (lowercased) -> [Effect]
        self.arrivals = collections.deque()

    def by(self, name, value):
        if value in (None, ""):
            return None
        for contact in self.contacts.values():
            current = contact.get(name)
            if current is not None and (current.lower() == value.lower() if name == "email" else current == value):
                return contact
        return None


class _Reject(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _answer(obj, status=200, headers=None):
    return Response(json.dumps(obj), status, headers=headers, content_type="application/json")


class LoopsAPI:
    """The Loops API as a WSGI app. `api_keys` maps each valid key to its team's name."""

    # The real API is HTTPS/1.1 (and HTTP/2): connections stay open between requests, which
    # PROVIDERS.md does not contradict. Served keep-alive (harness.SimulatorServer), a client
    # pays a connect per connection, not per request, as against Loops (docs/PERFORMANCE.md).
    keep_alive = True

    def __init__(self, api_keys=None, *, rate_limit=(10, 1.0), known_properties=None):
        self.api_keys = dict(api_keys or {"loops-test-key": "Test Team"})
        self.rate_limit = rate_limit
        # None: any custom property is accepted; a set: others are refused with 400.
        self.known_properties = None if known_properties is None else set(known_properties)
        self.outage = None  # an HTTP status answered to everything while set
        self.violations = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._teams = {}
        for team in self.api_keys.values():
            self._teams.setdefault(team, Team(team))

    # -- what tests read --------------------------------------------------------------

    def team(self, name=None):
        return self._teams[name or next(iter(self._teams))]

    def contact(self, email, team=None):
        """The stored contact with this email (a copy), or None."""
        with self._lock:
            found = self.team(team).by("email", email)
            return dict(found) if found else None

    def contacts(self, team=None):
        with self._lock:
            return [dict(c) for c in self.team(team).contacts.values()]

    def events(self, team=None):
        with self._lock:
            return list(self.team(team).events)

    def effects(self, email, team=None):
        with self._lock:
            return list(self.team(team).effects.get(email.lower(), []))

    def sequence(self, email, team=None):
        """Idempotency keys of the effects on this contact, in the order they took effect,
        with back-to-back repeats (a redelivery of the same request) collapsed."""
        keys = []
        for effect in self.effects(email, team):
            if not keys or keys[-1] != effect.idempotency_key:
                keys.append(effect.idempotency_key)
        return keys

    def duplicate_effects(self, team=None):
        """[(email, idempotency_key)] for requests that took effect twice in a way that could
        matter: the same key again after another key (a stale redelivery that reorders the
        contact's history), or again with different content, or an event sent twice."""
        found = []
        with self._lock:
            for email, effects in self.team(team).effects.items():
                seen, last = {}, None
                for effect in effects:
                    key = effect.idempotency_key
                    if key is None:
                        last = None
                        continue
                    # The first delivery may have created the contact and the repeat updated
                    # it: the same fields set again is the same effect.
                    if key in seen and (last != key or seen[key] != effect.fields or effect.kind == "event"):
                        found.append((email, key))
                    seen[key] = effect.fields
                    last = key
        return found

    def define_property(self, name):
        """Create a custom contact property (as one does in the Loops UI)."""
        with self._lock:
            if self.known_properties is not None:
                self.known_properties.add(name)

    # -- WSGI -------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        path = request.path.rstrip("/")
        if path.startswith("/api/"):
            path = path[len("/api"):]
        if path == "/_simulator/stats":  # for benchmarks running the simulator in another process
            with self._lock:
                stats = {"requests": self.requests, "violations": self.violations}
            return _answer(stats)(environ, start_response)
        with self._lock:
            self.requests += 1
            outage = self.outage
        if outage:
            response = _answer({"success": False, "message": "Service unavailable"}, outage)
            return response(environ, start_response)
        team = self._team_for(request)
        if team is None:
            response = _answer({"success": False, "message": "Invalid API key"}, 401)
            return response(environ, start_response)
        limited, headers = self._admit(team)
        if limited:
            response = _answer({"success": False, "message": "Rate limit exceeded"}, 429, headers)
            return response(environ, start_response)
        try:
            body = self._route(team, request, path)
            response = _answer(body, 200, headers)
        except _Reject as exc:
            response = _answer({"success": False, "message": exc.message}, exc.status, headers)
        return response(environ, start_response)

    def _team_for(self, request):
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        supplied = header[len("Bearer "):].strip()
        for key, team in self.api_keys.items():
            if secrets.compare_digest(supplied.encode(), key.encode()):
                return self._teams[team]
        return None

    def _admit(self, team):
        """Sliding one-window log per team. Returns (limited, rate-limit headers)."""
        if self.rate_limit is None:
            return False, {}
        limit, window = self.rate_limit
        with self._lock:
            now = time.monotonic()
            while team.arrivals and team.arrivals[0] <= now - window:
                team.arrivals.popleft()
            if len(team.arrivals) >= limit:
                self.violations += 1
                reset = team.arrivals[0] + window - now
                return True, {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": "0",
                              "Retry-After": str(max(1, math.ceil(reset)))}
            team.arrivals.append(now)
            return False, {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(limit - len(team.arrivals))}

    def _route(self, team, request, path):
        routes = {
            ("GET", "/v1/api-key"): lambda: {"success": True, "teamName": team.name},
            ("POST", "/v1/contacts/create"): lambda: self._create(team, request),
            ("PUT", "/v1/contacts/update"): lambda: self._update(team, request),
            ("GET", "/v1/contacts/find"): lambda: self._find(team, request),
            ("POST", "/v1/contacts/delete"): lambda: self._delete(team, request),
            ("POST", "/v1/events/send"): lambda: self._send_event(team, request),
        }
        handler = routes.get((request.method, path))
        if handler is None:
            if any(p == path for _, p in routes):
                raise _Reject(405, "Method not allowed")
            raise _Reject(404, "Not found")
        return handler()

    # -- endpoints --------------------------------------------------------------------

    @staticmethod
    def _body(request):
        try:
            body = json.loads(request.get_data() or b"null")
        except ValueError:
            raise _Reject(400, "Invalid JSON body") from None
        if not isinstance(body, dict):
            raise _Reject(400, "Request body must be a JSON object")
        return body

    def _check_fields(self, body, skip=()):
        email = body.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email or len(email) > 320):
            raise _Reject(400, "Invalid email address")
        if "mailingLists" in body and not isinstance(body["mailingLists"], dict):
            raise _Reject(400, "mailingLists must be an object")
        for name, value in body.items():
            if name in RESERVED or name in skip:
                continue
            if self.known_properties is not None and name not in self.known_properties:
                raise _Reject(400, f"Contact property '{name}' does not exist. Create it in Loops first.")
            if isinstance(value, (dict, list)):
                raise _Reject(400, f"Contact property '{name}' must be a string, number, boolean or null")

    @staticmethod
    def _apply(contact, body, skip=()):
        changes = {}
        for name, value in body.items():
            if name in skip or name == "mailingLists":
                continue
            changes[name] = value
            contact[name] = value
        if "mailingLists" in body:
            contact.setdefault("mailingLists", {}).update(body["mailingLists"])
            changes["mailingLists"] = dict(body["mailingLists"])
        return changes

    @staticmethod
    def _new_contact(team):
        contact_id = "cl" + secrets.token_hex(10)
        contact = {"id": contact_id, "email": None, "firstName": None, "lastName": None, "source": "API",
                   "subscribed": True, "userGroup": None, "userId": None, "mailingLists": {}}
        team.contacts[contact_id] = contact
        return contact

    @staticmethod
    def _record(team, contact, kind, request, fields):
        email = (contact.get("email") or "").lower()
        team.effects[email].append(Effect(kind, request.headers.get("Idempotency-Key"), fields))

    def _create(self, team, request):
        body = self._body(request)
        if not body.get("email"):
            raise _Reject(400, "email is required")
        self._check_fields(body)
        with self._lock:
            if team.by("email", body["email"]) or team.by("userId", body.get("userId")):
                raise _Reject(409, "Email or userId is already on a contact")
            contact = self._new_contact(team)
            changes = self._apply(contact, body)
            self._record(team, contact, "create", request, changes)
            return {"success": True, "id": contact["id"]}

    def _update(self, team, request):
        body = self._body(request)
        if not body.get("email") and not body.get("userId"):
            raise _Reject(400, "email or userId is required")
        self._check_fields(body)
        with self._lock:
            contact = team.by("email", body.get("email")) or team.by("userId", body.get("userId"))
            kind = "update"
            if contact is None:
                if not body.get("email"):
                    raise _Reject(400, "No contact with that userId; an email is needed to create one")
                contact, kind = self._new_contact(team), "create"
            elif body.get("userId") and contact.get("userId") not in (None, body["userId"]):
                raise _Reject(409, "That email belongs to a contact with another userId")
            changes = self._apply(contact, body)
            self._record(team, contact, kind, request, changes)
            return {"success": True, "id": contact["id"]}

    def _find(self, team, request):
        email, user_id = request.args.get("email"), request.args.get("userId")
        if bool(email) == bool(user_id):
            raise _Reject(400, "Search by one of email or userId")
        with self._lock:
            contact = team.by("email", email) if email else team.by("userId", user_id)
            return [dict(contact)] if contact else []

    def _delete(self, team, request):
        body = self._body(request)
        with self._lock:
            contact = team.by("email", body.get("email")) or team.by("userId", body.get("userId"))
            if contact is None:
                raise _Reject(404, "Contact not found")
            del team.contacts[contact["id"]]
            self._record(team, contact, "delete", request, {})
            return {"success": True, "message": "Contact deleted"}

    def _send_event(self, team, request):
        body = self._body(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and (not key or len(key) > MAX_IDEMPOTENCY_KEY):
            raise _Reject(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        if not isinstance(body.get("eventName"), str) or not body["eventName"]:
            raise _Reject(400, "eventName is required")
        if not body.get("email") and not body.get("userId"):
            raise _Reject(400, "email or userId is required")
        properties = body.get("eventProperties") or {}
        if not isinstance(properties, dict):
            raise _Reject(400, "eventProperties must be an object")
        self._check_fields(body, skip=EVENT_FIELDS)
        with self._lock:
            if key is not None and key in team.idempotency_keys:
                raise _Reject(409, "Idempotency key has already been used")
            contact = team.by("email", body.get("email")) or team.by("userId", body.get("userId"))
            if contact is None:
                if not body.get("email"):
                    raise _Reject(400, "No contact with that userId; an email is needed to create one")
                contact = self._new_contact(team)
                self._apply(contact, {"email": body["email"]})
            contact_fields = {k: v for k, v in body.items() if k not in EVENT_FIELDS}
            self._apply(contact, contact_fields)
            if key is not None:
                team.idempotency_keys.add(key)
            team.events.append((contact["email"], body["eventName"], properties, key))
            self._record(team, contact, "event", request,
                         {"eventName": body["eventName"], "eventProperties": properties, **contact_fields})
            return {"success": True}
