"""A HaloPSA API simulator (PROVIDERS.md, HaloPSA), faithful where ticket syncs break:

- token: `POST /auth/token` (optional `?tenant=`), form grant_type=client_credentials,
  client_id, client_secret, scope=all -> {access_token, token_type: "Bearer", expires_in};
  no refresh token. `expire_tokens()` ends every token now, `revoke()` disables the client.
- `GET /api/Tickets?pageinate=true&page_size=<=100&page_no=N` -> {record_count, tickets};
  page_size and page_no are IGNORED without pageinate=true (everything comes back at once);
  `datesearch=dateoccurred&startdate=&enddate=` filter (both bounds inclusive), `order`
  (id or dateoccurred) with `orderdesc`.
- `GET /api/Tickets/{id}` -> the ticket, 404 when there is none.
- `GET /api/Agent` -> a bare array, or {record_count, agents} with agent_envelope="object".
- Throttling: more than `rate_limit` requests (500 per 180 s by default) -> 429 with
  Retry-After (seconds until a slot frees), counted in `violations`.

- Webhooks: `send_webhook(url, event, ticket_id)` posts {event, id, object_id, ticket} with
  Basic-auth credentials (`webhook_username`, `webhook_password`), no HMAC; Halo's payload
  is configurable, `webhook_body` is one plausible shape.

Tickets are generated from `seed`, `tickets` of them spread evenly over `days` days from
`first_date`, assigned round-robin-ish to `agents` agents; every `malformed_every`-th one
is broken (no id, or an unparseable dateoccurred). `add_tickets`, `change`, `delete`
mutate the data thread-safely.
"""
import json
import random
import secrets
import time
import uuid
from datetime import datetime, timedelta

from .common import ProviderAPI, Tokens, Window, answer, bearer, basic_auth, post_webhook, retry_after_seconds

STATUSES = ((1, "New"), (2, "In Progress"), (3, "Waiting on Customer"), (9, "Closed"))
TEAMS = ("Service Desk", "Projects", "Field")


def _stamp(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _bound(text, end):
    """A startdate/enddate value as a comparable 19-character timestamp."""
    text = (text or "").strip().replace(" ", "T").rstrip("Z")
    if len(text) == 10:
        return text + ("T23:59:59" if end else "T00:00:00")
    return text[:19]


class HaloAPI(ProviderAPI):
    def __init__(self, tickets=300, agents=5, *, seed=1, client_id="halo-client", client_secret="halo-client-secret",
                 tenant=None, token_ttl=3600, rate_limit=(500, 180.0), agent_envelope="list",
                 first_date="2023-07-01", days=1096, malformed_every=0, page_size_max=100,
                 webhook_username="halo-webhook", webhook_password="halo-webhook-password"):
        super().__init__()
        self.webhook_username, self.webhook_password = webhook_username, webhook_password
        self.client_id, self.client_secret, self.tenant = client_id, client_secret, tenant
        self.client_enabled = True
        self.tokens = Tokens(token_ttl, prefix="halo")
        self.token_requests = 0
        self.window = Window(*rate_limit)
        self.agent_envelope = agent_envelope
        self.page_size_max = page_size_max
        self.malformed_every = malformed_every
        self.rng = random.Random(seed)
        self.agents = [{"id": n + 1, "name": f"Agent {n + 1}", "email": f"agent{n + 1}@halo.example",
                        "team": TEAMS[n % len(TEAMS)], "isdisabled": False} for n in range(agents)]
        self.tickets = {}  # id -> ticket, in id order
        self._next_id = 1
        self._version = 0  # bumped by every change, so cached listings stay true
        self._views = {}
        start = datetime.fromisoformat(first_date)
        step = timedelta(days=days) / max(1, tickets)
        self.add_tickets(tickets, start=start, step=step)

    # -- dataset ----------------------------------------------------------------------------

    def add_tickets(self, n, start, step=timedelta(hours=3)):
        """n tickets occurring from `start` (a datetime or ISO date), `step` apart. Returns ids."""
        if isinstance(start, str):
            start = datetime.fromisoformat(start)
        ids = []
        with self.lock:
            for k in range(n):
                ticket_id = self._next_id
                self._next_id += 1
                occurred = start + step * k + timedelta(minutes=self.rng.randrange(0, 120))
                agent = self.agents[self.rng.randrange(len(self.agents))] if self.agents else None
                status_id, status_name = STATUSES[self.rng.randrange(len(STATUSES))]
                ticket = {"id": ticket_id, "dateoccurred": _stamp(occurred), "summary": f"Ticket {ticket_id}",
                          "status_id": status_id, "status_name": status_name,
                          "client_id": 100 + ticket_id % 7, "client_name": f"Client {ticket_id % 7}",
                          "agent_id": agent["id"] if agent else None, "agent_name": agent["name"] if agent else None,
                          "team": agent["team"] if agent else None, "priority_id": 1 + ticket_id % 4,
                          "lastactiondate": _stamp(occurred + timedelta(hours=2)),
                          "last_update": _stamp(occurred + timedelta(hours=2)),
                          "dateclosed": _stamp(occurred + timedelta(days=1)) if status_id == 9 else None}
                if self.malformed_every and ticket_id % self.malformed_every == 0:
                    if (ticket_id // self.malformed_every) % 2:
                        ticket["id"] = None
                    else:
                        ticket["dateoccurred"] = "yesterday-ish"
                self.tickets[ticket_id] = ticket
                ids.append(ticket_id)
            self._version += 1
        return ids

    def change(self, ids, note="edited"):
        with self.lock:
            for ticket_id in ids:
                ticket = self.tickets[ticket_id]
                ticket["summary"] = f"{ticket['summary']} ({note})"
                ticket["last_update"] = _stamp(datetime.now())
            self._version += 1

    def delete(self, ids):
        with self.lock:
            for ticket_id in ids:
                del self.tickets[ticket_id]
            self._version += 1

    def between(self, start, end):
        """Ids of well-formed tickets with start <= dateoccurred <= end (ISO strings)."""
        low, high = _bound(start, False), _bound(end, True)
        with self.lock:
            return [t["id"] for t in self.tickets.values()
                    if t["id"] is not None and len(t["dateoccurred"]) == 19 and low <= t["dateoccurred"] <= high]

    def expire_tokens(self):
        self.tokens.expire_all()

    def revoke(self):
        self.client_enabled = False
        self.tokens.revoke_all()

    @property
    def violations(self):
        return self.window.violations

    def stats(self):
        out = super().stats()
        out.update(violations=self.violations, busiest=self.window.busiest, token_requests=self.token_requests)
        return out

    # -- webhooks ---------------------------------------------------------------------------

    def webhook_body(self, event, ticket_id):
        with self.lock:
            ticket = dict(self.tickets.get(ticket_id) or {"id": ticket_id})
        return json.dumps({"id": str(uuid.uuid4()), "event": event, "object_id": ticket_id,
                           "ticket": ticket}).encode()

    def send_webhook(self, url, event, ticket_id, username=None, password=None, body=None):
        """POST a ticket event to `url` as Halo does: Basic-auth credentials, JSON body."""
        body = self.webhook_body(event, ticket_id) if body is None else body
        headers = basic_auth(username or self.webhook_username, password or self.webhook_password)
        return post_webhook(url, body, headers)

    # -- HTTP -------------------------------------------------------------------------------

    def handle(self, request):
        path = request.path.rstrip("/")
        if path == "/auth/token" and request.method == "POST":
            return "POST /auth/token", self._token(request)
        routes = {"/api/tickets": "GET /api/Tickets", "/api/agent": "GET /api/Agent"}
        route = routes.get(path.lower())
        one = path.lower().rsplit("/", 1)
        if route is None and one[0] == "/api/tickets" and one[1].isdigit():
            route = "GET /api/Tickets/{id}"
        if route is None or request.method != "GET":
            return None, answer({"message": "Not found"}, 404)
        with self.lock:
            admitted, _, wait = self.window.admit(time.monotonic())
        if not admitted:
            return route, answer({"message": "Too many requests"}, 429, {"Retry-After": retry_after_seconds(wait)})
        token = bearer(request)
        if not (token and self.tokens.valid(token)):
            return route, answer({"message": "Unauthorized: the access token is invalid or has expired"}, 401)
        if route == "GET /api/Agent":
            with self.lock:
                agents = [dict(a) for a in self.agents]
            return route, answer(agents if self.agent_envelope == "list" else
                                 {"record_count": len(agents), "agents": agents})
        if route == "GET /api/Tickets/{id}":
            with self.lock:
                ticket = self.tickets.get(int(one[1]))
            if ticket is None:
                return route, answer({"message": f"Ticket {one[1]} not found"}, 404)
            return route, answer(dict(ticket))
        return route, self._tickets(request)

    def _token(self, request):
        with self.lock:
            self.token_requests += 1
        form = request.form
        if self.tenant is not None and request.args.get("tenant") != self.tenant:
            return answer({"error": "invalid_request", "error_description": "unknown tenant"}, 400)
        if not self.client_enabled or form.get("client_id") != self.client_id or not secrets.compare_digest(
                form.get("client_secret") or "", self.client_secret):
            return answer({"error": "invalid_client", "error_description": "Invalid client credentials"}, 401)
        if form.get("grant_type") != "client_credentials":
            return answer({"error": "unsupported_grant_type"}, 400)
        return answer({"access_token": self.tokens.issue(), "token_type": "Bearer",
                       "expires_in": int(self.tokens.ttl), "scope": form.get("scope") or "all"})

    def _listing(self, args):
        """The filtered, ordered tickets for these arguments; cached until the data changes."""
        key = (args.get("datesearch", "dateoccurred"), args.get("startdate"), args.get("enddate"),
               (args.get("order") or "id").lower(), args.get("orderdesc", "").lower() == "true")
        with self.lock:
            cached = self._views.get(key)
            if cached is not None and cached[0] == self._version:
                return cached[1]
            tickets = [dict(t) for t in self.tickets.values()]
            version = self._version
        if key[0] == "dateoccurred" and (key[1] or key[2]):
            low = _bound(key[1], False) if key[1] else ""
            high = _bound(key[2], True) if key[2] else "\uffff"
            # Malformed dates pass the filter, as a loose provider-side comparison would let them.
            tickets = [t for t in tickets if len(t["dateoccurred"]) != 19 or low <= t["dateoccurred"] <= high]
        if key[3] in ("id", "dateoccurred"):
            tickets.sort(key=lambda t: (str(t.get(key[3]) or ""), t.get("id") or 0) if key[3] == "dateoccurred"
                         else (t.get("id") or 0), reverse=key[4])
        with self.lock:
            if len(self._views) > 16:
                self._views.clear()
            self._views[key] = (version, tickets)
        return tickets

    def _tickets(self, request):
        args = request.args
        tickets = self._listing(args)
        total = len(tickets)
        if args.get("pageinate", "").lower() == "true":
            try:
                size = max(1, min(int(args.get("page_size") or 50), self.page_size_max))
                page = max(1, int(args.get("page_no") or 1))
            except ValueError:
                return answer({"message": "page_size and page_no must be integers"}, 400)
            tickets = tickets[(page - 1) * size:page * size]
        return answer({"record_count": total, "tickets": tickets})
