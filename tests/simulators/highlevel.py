"""A HighLevel (LeadConnector API v2) simulator (PROVIDERS.md, HighLevel), faithful where
order syncs break:

- auth: `Authorization: Bearer <token>` with a private integration token, or an OAuth2
  access token from `POST /oauth/token` (grant_type=refresh_token): every refresh rotates
  the refresh token, and the old one is refused afterwards (401 invalid_grant, counted in
  `refresh_reuse`). `expire_tokens()` ends every access token now, `revoke()` everything.
  The `Version: 2021-07-28` header is required (400 without it).
- `GET /products/?locationId=&limit=&offset=` -> {products, total: [{total}]} (total is an array).
- `GET /payments/orders?altId=&altType=location&limit=&offset=` (+ status, paymentStatus,
  startAt/endAt as YYYY-MM-DD on createdAt) -> {data: [order summary], totalCount}.
- `GET /payments/orders/{id}?altId=...` -> the order with items [{name, qty, product{_id,
  name, productType}, price{...}}], contactSnapshot, amountSummary.
- Errors {statusCode, message, error}. Rate limit per location, 100 requests / 10 s by
  default: X-RateLimit-Max/-Remaining/-Interval-Milliseconds/-Daily-Remaining on every
  answer, 429 when exceeded (counted in `violations`).
- Webhooks OrderCreate / OrderStatusUpdate: the order plus type, locationId, webhookId,
  timestamp, signed over the raw body with the simulator's own Ed25519 key
  (x-ghl-signature, base64); `public_key_pem` is what a connection is configured with.

Data is generated from `seed`: `products` ticket types (the last `inactive_products` not
available in store), `orders` orders with 1-3 items each; `tickets_per_order` fixes each
order's total quantity (S4's 150 orders / 450 tickets); every `invalid_every`-th order has
only inactive products.
"""
import base64
import hashlib
import json
import random
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .common import ProviderAPI, Tokens, Window, answer, bearer, post_webhook, retry_after_seconds

VERSION = "2021-07-28"
TICKET_TYPES = ("General Admission", "VIP", "Student", "Early Bird", "Backstage", "Workshop", "Dinner", "Day Pass")
FIRST_ORDER = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def _iso(moment):
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HighLevelAPI(ProviderAPI):
    def __init__(self, orders=20, products=5, *, seed=1, location_id="loc-sim-1", private_token="pit-sim-token",
                 client_id="ghl-client", client_secret="ghl-client-secret", refresh_token="rt-initial",
                 access_ttl=86399, rate_limit=(100, 10.0), daily_limit=200_000, inactive_products=1,
                 invalid_every=0, tickets_per_order=None, max_qty=4, retry_after=None, page_limit_max=100):
        super().__init__()
        self.location_id = location_id
        self.private_tokens = {private_token} if private_token else set()
        self.client_id, self.client_secret = client_id, client_secret
        self.refresh_token = refresh_token  # the one valid refresh token
        self.spent_refresh_tokens = set()
        self.refresh_reuse = 0
        self.token_requests = 0
        self.tokens = Tokens(access_ttl, prefix="ghl")
        self.window = Window(*rate_limit)
        self.daily_limit = daily_limit
        self.daily_used = 0
        self.retry_after = retry_after
        self.page_limit_max = page_limit_max
        self.rng = random.Random(seed)
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"highlevel:{seed}".encode()).digest())
        self.products = {}  # _id -> product, in listing order
        self.orders = {}  # _id -> order detail (with items), in listing order
        for n in range(products):
            self._add_product(n, active=n < products - inactive_products)
        self.tickets_per_order = tickets_per_order
        self.max_qty = max_qty
        self.invalid_every = invalid_every
        for _ in range(orders):
            self.add_order()

    # -- dataset ----------------------------------------------------------------------------

    def _hex_id(self):
        return "%024x" % self.rng.getrandbits(96)

    def _add_product(self, n, active=True):
        product = {"_id": self._hex_id(), "locationId": self.location_id,
                   "name": TICKET_TYPES[n % len(TICKET_TYPES)] + (f" {n // len(TICKET_TYPES) + 1}" if n >= len(TICKET_TYPES) else ""),
                   "productType": "DIGITAL" if n % 2 == 0 else "SERVICE", "availableInStore": active,
                   "description": f"Ticket type {n}", "createdAt": _iso(FIRST_ORDER - timedelta(days=60 - n)),
                   "updatedAt": _iso(FIRST_ORDER - timedelta(days=60 - n))}
        self.products[product["_id"]] = product
        return product

    def active_product_ids(self):
        with self.lock:
            return [p["_id"] for p in self.products.values() if p["availableInStore"]]

    def _quantities(self, index):
        with self.lock:
            active = [p for p in self.products.values() if p["availableInStore"]]
            inactive = [p for p in self.products.values() if not p["availableInStore"]]
        if self.invalid_every and (index + 1) % self.invalid_every == 0 and inactive:
            return {inactive[index % len(inactive)]["_id"]: 1 + index % 2}
        chosen = self.rng.sample(active, self.rng.randint(1, min(3, len(active))))
        if self.tickets_per_order:
            total, k = self.tickets_per_order, min(len(chosen), self.tickets_per_order)
            chosen = chosen[:k]
            return {p["_id"]: total // k + (1 if i < total % k else 0) for i, p in enumerate(chosen)}
        return {p["_id"]: self.rng.randint(1, self.max_qty) for p in chosen}

    def add_order(self, quantities=None):
        """A new order; `quantities` {product id: qty} or generated. Returns its id."""
        with self.lock:
            index = len(self.orders)
            quantities = quantities or self._quantities(index)
            created = FIRST_ORDER + timedelta(hours=7 * index, minutes=self.rng.randrange(60))
            contact = f"contact{index:04d}"
            order = {"_id": self._hex_id(), "altId": self.location_id, "altType": "location",
                     "contactId": self._hex_id()[:20], "contactName": f"Buyer {index}",
                     "contactEmail": f"{contact}@example.com", "currency": "USD", "amount": 0,
                     "status": "completed", "paymentStatus": "paid", "liveMode": True,
                     "fulfillmentStatus": "unfulfilled", "sourceType": "funnel", "sourceId": "funnel-1",
                     "sourceName": "Ticket checkout", "createdAt": _iso(created), "updatedAt": _iso(created),
                     "contactSnapshot": {"firstName": "Buyer", "lastName": str(index), "email": f"{contact}@example.com"}}
            self.orders[order["_id"]] = order
            self._set_items(order, quantities)
            return order["_id"]

    def _set_items(self, order, quantities):
        items = []
        for product_id, qty in quantities.items():
            if qty <= 0:
                continue
            product = self.products[product_id]
            price = 25 + 10 * (list(self.products).index(product_id) % 5)
            items.append({"_id": self._hex_id(), "name": product["name"], "qty": qty,
                          "product": {"_id": product_id, "name": product["name"], "productType": product["productType"]},
                          "price": {"_id": self._hex_id(), "name": "Standard", "amount": price, "currency": "USD"}})
        order["items"] = items
        order["amount"] = sum(i["qty"] * i["price"]["amount"] for i in items)
        order["amountSummary"] = {"subtotal": order["amount"], "discount": 0}

    def set_quantities(self, order_id, quantities, status=None):
        """Change an order's items ({product id: qty}; 0 removes an item) and maybe its status."""
        with self.lock:
            order = self.orders[order_id]
            self._set_items(order, quantities)
            if status:
                order["status"] = status
            order["updatedAt"] = _iso(datetime.now(timezone.utc))

    def quantities(self, order_id):
        with self.lock:
            return {i["product"]["_id"]: i["qty"] for i in self.orders[order_id]["items"]}

    def delete_order(self, order_id):
        with self.lock:
            del self.orders[order_id]

    def set_product_active(self, product_id, active):
        with self.lock:
            self.products[product_id]["availableInStore"] = active

    def expected_tickets(self, valid_products=None):
        """{order id: {product id: qty}} of the orders a sync must turn into tickets."""
        valid = set(valid_products if valid_products is not None else self.active_product_ids())
        with self.lock:
            out = {}
            for order in self.orders.values():
                quantities = {i["product"]["_id"]: i["qty"] for i in order["items"] if i["product"]["_id"] in valid}
                if quantities:
                    out[order["_id"]] = quantities
            return out

    def expire_tokens(self):
        self.tokens.expire_all()

    def revoke(self):
        """The app is uninstalled: tokens and the refresh token stop working."""
        with self.lock:
            self.tokens.revoke_all()
            self.private_tokens.clear()
            self.spent_refresh_tokens.add(self.refresh_token)
            self.refresh_token = None

    @property
    def violations(self):
        return self.window.violations

    def stats(self):
        out = super().stats()
        out.update(violations=self.violations, busiest=self.window.busiest, token_requests=self.token_requests,
                   refresh_reuse=self.refresh_reuse)
        return out

    # -- webhooks ---------------------------------------------------------------------------

    @property
    def public_key_pem(self):
        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def webhook_body(self, event_type, order_id, webhook_id=None, timestamp=None):
        with self.lock:
            order = json.loads(json.dumps(self.orders[order_id]))
        order.update(type=event_type, locationId=self.location_id, webhookId=webhook_id or str(uuid.uuid4()),
                     timestamp=timestamp or datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        return json.dumps(order).encode()

    def sign(self, body):
        return {"x-ghl-signature": base64.b64encode(self._key.sign(body)).decode()}

    def send_webhook(self, url, event_type, order_id, **kwargs):
        body = self.webhook_body(event_type, order_id, **kwargs)
        return post_webhook(url, body, self.sign(body))

    # -- HTTP -------------------------------------------------------------------------------

    def handle(self, request):
        path = request.path.rstrip("/")
        if path == "/oauth/token" and request.method == "POST":
            return "POST /oauth/token", self._token(request)
        if request.method != "GET":
            return None, _error(404, "Not Found")
        if path == "/products":
            route = "GET /products/"
        elif path == "/payments/orders":
            route = "GET /payments/orders"
        elif path.startswith("/payments/orders/") and path.count("/") == 3:
            route = "GET /payments/orders/{orderId}"
        else:
            return None, _error(404, "Not Found")
        with self.lock:
            admitted, remaining, wait = self.window.admit(time.monotonic())
            if admitted:
                self.daily_used += 1
            headers = {"X-RateLimit-Max": str(self.window.limit), "X-RateLimit-Remaining": str(remaining),
                       "X-RateLimit-Interval-Milliseconds": str(int(self.window.seconds * 1000)),
                       "X-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self.daily_used))}
        if not admitted:
            if self.retry_after is not None:
                headers["Retry-After"] = retry_after_seconds(wait) if self.retry_after == "wait" else str(self.retry_after)
            return route, _error(429, "Too many requests", headers)
        if not request.headers.get("Version"):
            return route, _error(400, "Version header was not found", headers)
        if not self._authorized(request):
            return route, _error(401, "Invalid JWT", headers)
        if route == "GET /products/":
            return route, self._products(request, headers)
        if request.args.get("altId") != self.location_id:
            return route, _error(403, "The token does not have access to this location", headers)
        if route == "GET /payments/orders":
            return route, self._orders(request, headers)
        with self.lock:
            order = self.orders.get(path.rsplit("/", 1)[1])
            body = json.dumps(order) if order else None
        if body is None:
            return route, _error(404, "Order not found", headers)
        return route, answer(json.loads(body), headers=headers)

    def _authorized(self, request):
        token = bearer(request)
        return bool(token) and (token in self.private_tokens or self.tokens.valid(token))

    def _token(self, request):
        form = request.form
        with self.lock:
            self.token_requests += 1
            if form.get("client_id") != self.client_id or not secrets.compare_digest(
                    form.get("client_secret") or "", self.client_secret):
                return answer({"error": "invalid_client", "error_description": "Invalid client credentials"}, 401)
            if form.get("grant_type") != "refresh_token":
                return answer({"error": "unsupported_grant_type"}, 400)
            supplied = form.get("refresh_token") or ""
            if self.refresh_token is None or not secrets.compare_digest(supplied, self.refresh_token):
                if supplied in self.spent_refresh_tokens:
                    self.refresh_reuse += 1
                return answer({"error": "invalid_grant", "error_description": "Invalid refresh token"}, 401)
            self.spent_refresh_tokens.add(supplied)
            self.refresh_token = f"rt-{secrets.token_hex(16)}"
            return answer({"access_token": self.tokens.issue(), "token_type": "Bearer",
                           "expires_in": int(self.tokens.ttl), "refresh_token": self.refresh_token,
                           "scope": "payments/orders.readonly products.readonly", "userType": "Location",
                           "locationId": self.location_id, "companyId": "company-sim", "userId": "user-sim"})

    def _page(self, request):
        try:
            limit = int(request.args.get("limit") or 20)
            offset = int(request.args.get("offset") or 0)
        except ValueError:
            return None
        if limit < 1 or offset < 0:
            return None
        return min(limit, self.page_limit_max), offset

    def _products(self, request, headers):
        if request.args.get("locationId") != self.location_id:
            return _error(403, "The token does not have access to this location", headers)
        page = self._page(request)
        if page is None:
            return _error(422, "limit and offset must be non-negative integers", headers)
        limit, offset = page
        with self.lock:
            products = list(self.products.values())
        return answer({"products": products[offset:offset + limit], "total": [{"total": len(products)}]},
                      headers=headers)

    def _orders(self, request, headers):
        page = self._page(request)
        if page is None:
            return _error(422, "limit and offset must be non-negative integers", headers)
        limit, offset = page
        args = request.args
        with self.lock:
            orders = [o for o in self.orders.values()
                      if (not args.get("status") or o["status"] == args["status"])
                      and (not args.get("paymentStatus") or o["paymentStatus"] == args["paymentStatus"])
                      and (not args.get("startAt") or o["createdAt"][:10] >= args["startAt"])
                      and (not args.get("endAt") or o["createdAt"][:10] <= args["endAt"])]
            summaries = [{k: v for k, v in o.items() if k not in ("items", "contactSnapshot", "amountSummary")}
                         for o in orders[offset:offset + limit]]
        return answer({"data": summaries, "totalCount": len(orders)}, headers=headers)


def _error(status, message, headers=None):
    names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 422: "Unprocessable Entity",
             429: "Too Many Requests"}
    return answer({"statusCode": status, "message": message, "error": names.get(status, "Error")}, status, headers)
