"""A Zoom API simulator (PROVIDERS.md, Zoom), faithful where webinar syncs break:

- Server-to-Server OAuth: `POST /oauth/token` with Basic client_id:client_secret and
  grant_type=account_credentials&account_id=... in the query string (the form Zoom
  documents) or in a form body -> {access_token, token_type, expires_in, scope}; no
  refresh token. Tokens expire after `token_ttl`; `expire_tokens()` ends them all
  now (401 code 124 on the next call), `revoke()` also disables the app (token endpoint 401).
- `GET /v2/users/{userId}/webinars` paged by `next_page_token` (page_size 1-300; the older
  page_number works too), envelope {page_count, page_number, page_size, total_records,
  next_page_token, webinars}. Page tokens expire after `page_token_ttl` (15 min) or at once
  with `expire_page_tokens()`: 400 {code: 300}.
- `GET /v2/webinars/{id}`, `GET /v2/webinars/{id}/registrants` (token-paged),
  `GET /v2/webinars/{id}/registrants/{registrantId}`,
  `GET /v2/past_webinars/{id}/participants` (token-paged; 404 code 3001 before it happened).
- Errors {code, message}. Rate limits per account by category (light 30/s, medium 20/s,
  heavy 10/s by default): 429 with X-RateLimit-Category/Type/Limit/Remaining, counted in
  `violations`; `retry_after` adds a Retry-After header.
- Webhooks: `send_webhook(url, event, webinar_id, registrant_id=None)` posts {event,
  event_ts, payload: {account_id, object}} (registration events: the webinar with its
  `registrant`) signed with x-zm-signature = v0=HMAC-SHA256(secret,
  "v0:{timestamp}:{body}").

Data is generated from `seed`: `webinars` webinars, every `malformed_every`-th one broken
in one of four ways (missing topic, unparseable start_time, text id, negative duration).
`change(fraction)` / `delete(fraction)` / `add(n)` / `register(webinar_id)` /
`cancel_registration(webinar_id, registrant_id)` mutate it, thread-safely.
"""
import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from datetime import datetime, timedelta, timezone

from .common import ProviderAPI, Tokens, Window, answer, bearer, post_webhook, retry_after_seconds

FIRST_START = datetime(2025, 1, 6, 15, 0, tzinfo=timezone.utc)
ID_BASE = 85_000_000_000
CATEGORIES = {"light": (30, 1.0), "medium": (20, 1.0), "heavy": (10, 1.0)}
# Sessions spread over two years, so some are past (participants) and some upcoming.
SPREAD_DAYS = 730


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ZoomAPI(ProviderAPI):
    def __init__(self, webinars=100, *, seed=1, account_id="zoom-account", client_id="zoom-client",
                 client_secret="zoom-client-secret", webhook_secret="zoom-webhook-secret", token_ttl=3600,
                 page_token_ttl=900, rate_limits=None, malformed_every=0, registrants=(0, 3),
                 participants=(0, 3), page_size_max=300, retry_after=None):
        super().__init__()
        self.account_id, self.client_id, self.client_secret = account_id, client_id, client_secret
        self.webhook_secret = webhook_secret
        self.page_token_ttl = page_token_ttl
        self.page_size_max = page_size_max
        self.retry_after = retry_after
        self.tokens = Tokens(token_ttl, prefix="zoom")
        self.token_requests = 0
        self.app_enabled = True
        self.windows = {name: Window(*limit) for name, limit in (rate_limits or CATEGORIES).items()}
        self.rng = random.Random(seed)
        self.malformed_every = malformed_every
        self.webinars = {}  # id (int, or str for a malformed one) -> webinar, in listing order
        self.registrants = {}  # webinar id -> [registrant]
        self.participants = {}  # webinar id -> [participant]
        self._page_tokens = {}  # token -> (listing key, offset, issued at)
        self._counts = (registrants, participants)
        self._next = 0
        self.add(webinars)

    # -- dataset --------------------------------------------------------------------------

    def _webinar(self, i):
        rng = random.Random(f"{self.rng.random()}:{i}")
        start = FIRST_START + timedelta(days=SPREAD_DAYS * i / max(1, self._size_hint), minutes=rng.randrange(0, 180, 15))
        webinar = {
            "uuid": base64.b64encode(rng.randbytes(16)).decode(),
            "id": ID_BASE + i,
            "host_id": f"host{rng.randrange(5):02d}",
            "topic": f"Webinar {i}: {rng.choice(['Onboarding', 'Roadmap', 'Pricing', 'Q&A', 'Deep dive'])}",
            "type": rng.choice([5, 5, 5, 9]),
            "start_time": _iso(start),
            "duration": rng.choice([30, 45, 60, 90]),
            "timezone": rng.choice(["UTC", "America/New_York", "Europe/Paris", "Australia/Sydney"]),
            "agenda": f"Agenda of webinar {i}",
            "created_at": _iso(start - timedelta(days=30)),
            "join_url": f"https://zoom.us/j/{ID_BASE + i}",
        }
        if self.malformed_every and (i + 1) % self.malformed_every == 0:
            kind = (i + 1) // self.malformed_every % 4
            if kind == 0:
                del webinar["topic"]
            elif kind == 1:
                webinar["start_time"] = "next tuesday"
            elif kind == 2:
                webinar["id"] = f"bad-{i}"
            else:
                webinar["duration"] = -5
        low, high = self._counts[0]
        registrants = [{"id": f"r{i}x{n}", "email": f"person{n}.w{i}@example.com", "first_name": f"Person{n}",
                        "last_name": "Test", "status": "approved", "create_time": webinar["created_at"],
                        "join_url": f"https://zoom.us/w/{ID_BASE + i}?tk={n}"}
                       for n in range(rng.randint(low, high))]
        low, high = self._counts[1]
        participants = [{"id": f"p{i}x{n}", "user_id": str(16778240 + n), "name": f"Person{n} Test",
                         "user_email": f"person{n}.w{i}@example.com", "join_time": webinar["start_time"],
                         "leave_time": webinar["start_time"], "duration": 60 * webinar.get("duration", 0)}
                        for n in range(rng.randint(low, high))]
        return webinar, registrants, participants

    def add(self, n):
        """Append n generated webinars; returns their ids."""
        with self.lock:
            self._size_hint = max(getattr(self, "_size_hint", 0), self._next + n)
            ids = []
            for _ in range(n):
                webinar, registrants, participants = self._webinar(self._next)
                self._next += 1
                self.webinars[webinar["id"]] = webinar
                self.registrants[webinar["id"]] = registrants
                self.participants[webinar["id"]] = participants
                ids.append(webinar["id"])
            return ids

    def register(self, webinar_id, email=None):
        """A new registrant of a webinar (what webinar.registration_created announces)."""
        with self.lock:
            people = self.registrants.setdefault(webinar_id, [])
            n = len(people)
            registrant = {"id": f"r{webinar_id}n{n}", "email": email or f"new{n}.w{webinar_id}@example.com",
                          "first_name": f"New{n}", "last_name": "Registrant", "status": "approved",
                          "create_time": _iso(datetime.now(timezone.utc)),
                          "join_url": f"https://zoom.us/w/{webinar_id}?tk=new{n}"}
            people.append(registrant)
            return dict(registrant)

    def cancel_registration(self, webinar_id, registrant_id):
        with self.lock:
            self.registrants[webinar_id] = [r for r in self.registrants.get(webinar_id, []) if r["id"] != registrant_id]

    def valid_ids(self):
        with self.lock:
            return [i for i, w in self.webinars.items() if isinstance(i, int) and "topic" in w
                    and w.get("start_time", "").endswith("Z") and w.get("duration", 0) >= 0]

    def change(self, fraction=None, ids=None, seed=2):
        """Edit the topic and agenda of some valid webinars; returns the changed ids."""
        with self.lock:
            ids = list(ids) if ids is not None else self._pick(fraction, seed)
            for webinar_id in ids:
                webinar = self.webinars[webinar_id]
                webinar["topic"] = webinar["topic"] + " (updated)"
                webinar["agenda"] = f"{webinar['agenda']} / revised {seed}"
            return ids

    def delete(self, fraction=None, ids=None, seed=3):
        with self.lock:
            ids = list(ids) if ids is not None else self._pick(fraction, seed)
            for webinar_id in ids:
                del self.webinars[webinar_id]
            return ids

    def _pick(self, fraction, seed):
        pool = self.valid_ids()
        return sorted(random.Random(seed).sample(pool, max(1, round(len(pool) * fraction))))

    def expire_tokens(self):
        self.tokens.expire_all()

    def revoke(self):
        """The app is deactivated: its tokens stop working and no new ones are issued."""
        self.app_enabled = False
        self.tokens.revoke_all()

    def expire_page_tokens(self):
        with self.lock:
            self._page_tokens.clear()

    @property
    def violations(self):
        return sum(w.violations for w in self.windows.values())

    def stats(self):
        out = super().stats()
        out.update(violations=self.violations, token_requests=self.token_requests,
                   busiest={name: w.busiest for name, w in self.windows.items()})
        return out

    # -- webhooks ---------------------------------------------------------------------------

    def webhook_body(self, event, webinar_id, registrant_id=None):
        with self.lock:
            webinar = dict(self.webinars.get(webinar_id) or {"id": webinar_id})
            registrant = next((dict(r) for r in self.registrants.get(webinar_id, []) if r["id"] == registrant_id),
                              {"id": registrant_id})
        obj = webinar if event != "webinar.deleted" else {"id": webinar_id, "uuid": webinar.get("uuid")}
        if registrant_id is not None:  # Zoom sends a registration's webinar with its registrant
            obj = {k: webinar.get(k) for k in ("id", "uuid", "host_id", "topic", "type", "start_time")}
            obj["registrant"] = registrant
        return json.dumps({"event": event, "event_ts": int(time.time() * 1000),
                           "payload": {"account_id": self.account_id, "object": obj}}).encode()

    def sign(self, body, timestamp=None):
        timestamp = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(self.webhook_secret.encode(), b"v0:" + timestamp.encode() + b":" + body,
                          hashlib.sha256).hexdigest()
        return {"x-zm-request-timestamp": timestamp, "x-zm-signature": "v0=" + digest}

    def send_webhook(self, url, event, webinar_id, registrant_id=None):
        body = self.webhook_body(event, webinar_id, registrant_id)
        return post_webhook(url, body, self.sign(body))

    # -- HTTP -------------------------------------------------------------------------------

    def handle(self, request):
        path = request.path.rstrip("/")
        if path == "/oauth/token" and request.method == "POST":
            return "POST /oauth/token", self._token(request)
        if request.method != "GET" or not path.startswith("/v2/"):
            return None, answer({"code": 404, "message": "Not found"}, 404)
        parts = path[len("/v2/"):].split("/")
        if len(parts) == 3 and parts[0] == "users" and parts[2] == "webinars":
            route, category = "GET /users/{userId}/webinars", "medium"
        elif len(parts) == 2 and parts[0] == "webinars":
            route, category = "GET /webinars/{id}", "light"
        elif len(parts) == 3 and parts[0] == "webinars" and parts[2] == "registrants":
            route, category = "GET /webinars/{id}/registrants", "medium"
        elif len(parts) == 4 and parts[0] == "webinars" and parts[2] == "registrants":
            route, category = "GET /webinars/{id}/registrants/{registrantId}", "light"
        elif len(parts) == 3 and parts[0] == "past_webinars" and parts[2] == "participants":
            route, category = "GET /past_webinars/{id}/participants", "heavy"
        else:
            return None, answer({"code": 404, "message": "Not found"}, 404)
        limited = self._limit(category)
        if limited is not None:
            return route, limited
        denied = self._authorize(request)
        if denied is not None:
            return route, denied
        if route == "GET /users/{userId}/webinars":
            return route, self._list(request)
        webinar_id = _int(parts[1])
        with self.lock:
            webinar = self.webinars.get(webinar_id if webinar_id is not None else parts[1])
        if webinar is None:
            return route, answer({"code": 3001, "message": f"Webinar does not exist: {parts[1]}."}, 404)
        if route == "GET /webinars/{id}":
            return route, answer(webinar)
        if route == "GET /webinars/{id}/registrants/{registrantId}":
            with self.lock:
                found = next((dict(r) for r in self.registrants.get(webinar["id"], []) if r["id"] == parts[3]), None)
            if found is None:
                return route, answer({"code": 3079, "message": "Registrant not found."}, 404)
            return route, answer(found)
        if route == "GET /webinars/{id}/registrants":
            with self.lock:
                items = list(self.registrants.get(webinar["id"], []))
            return route, self._paged(request, ("registrants", webinar["id"]), items, "registrants")
        if webinar.get("start_time", "") > _iso(datetime.now(timezone.utc)):
            return route, answer({"code": 3001, "message": "This webinar has not happened yet."}, 404)
        with self.lock:
            items = list(self.participants.get(webinar["id"], []))
        return route, self._paged(request, ("participants", webinar["id"]), items, "participants")

    def _limit(self, category):
        window = self.windows.get(category)
        if window is None:
            return None
        with self.lock:
            admitted, remaining, wait = window.admit(time.monotonic())
        headers = {"X-RateLimit-Category": category.title(), "X-RateLimit-Type": "QPS",
                   "X-RateLimit-Limit": str(window.limit), "X-RateLimit-Remaining": str(remaining)}
        if admitted:
            return None
        if self.retry_after is not None:
            headers["Retry-After"] = retry_after_seconds(wait) if self.retry_after == "wait" else str(self.retry_after)
        return answer({"code": 429, "message": "You have reached the maximum per-second rate limit for this API. "
                                               "Try again later."}, 429, headers)

    def _authorize(self, request):
        token = bearer(request)
        if token and self.tokens.valid(token):
            return None
        message = "Access token is expired." if token and self.tokens.known(token) else "Invalid access token."
        return answer({"code": 124, "message": message}, 401)

    def _token(self, request):
        with self.lock:
            self.token_requests += 1
        auth = request.authorization
        if auth is None or auth.type != "basic" or auth.username != self.client_id \
                or not secrets.compare_digest(auth.password or "", self.client_secret) or not self.app_enabled:
            return answer({"reason": "Invalid client_id or client_secret", "error": "invalid_client"}, 401)
        # Zoom documents the query string; many clients post a form body: both work there.
        fields = {**request.form.to_dict(), **request.args.to_dict()}
        if fields.get("grant_type") != "account_credentials":
            return answer({"reason": "Unsupported grant type", "error": "unsupported_grant_type"}, 400)
        if fields.get("account_id") != self.account_id:
            return answer({"reason": "Invalid account_id", "error": "invalid_request"}, 400)
        return answer({"access_token": self.tokens.issue(), "token_type": "bearer",
                       "expires_in": int(self.tokens.ttl), "scope": "webinar:read:admin report:read:admin",
                       "api_url": "https://api.zoom.us"})

    def _list(self, request):
        with self.lock:
            items = list(self.webinars.values())
        return self._paged(request, ("webinars",), items, "webinars")

    def _paged(self, request, listing, items, key):
        args = request.args
        try:
            size = int(args.get("page_size") or 30)
            number = int(args["page_number"]) if args.get("page_number") else None
        except ValueError:
            return answer({"code": 300, "message": "Invalid page_size or page_number."}, 400)
        if size < 1:
            return answer({"code": 300, "message": "page_size must be at least 1."}, 400)
        size = min(size, self.page_size_max)
        token = args.get("next_page_token")
        if token:
            with self.lock:
                issued = self._page_tokens.get(token)
            if issued is None or issued[0] != listing or time.monotonic() - issued[2] > self.page_token_ttl:
                return answer({"code": 300, "message": "The next page token is invalid or expired."}, 400)
            start = issued[1]
        elif number is not None:
            start = (max(1, number) - 1) * size
        else:
            start = 0
        end = start + size
        next_token = ""
        if end < len(items):
            next_token = secrets.token_urlsafe(24)
            with self.lock:
                self._page_tokens[next_token] = (listing, end, time.monotonic())
        total = len(items)
        return answer({"page_count": max(1, -(-total // size)), "page_number": start // size + 1, "page_size": size,
                       "total_records": total, "next_page_token": next_token, key: items[start:end]})


def _int(text):
    try:
        return int(text)
    except ValueError:
        return None
