"""HighLevel / LeadConnector orders and tickets (S4): streams `products`, `orders` and the
derived `tickets`.

Auth: a private integration token (credentials {"token"}) or OAuth2 (credentials
client_id, client_secret, refresh_token; HighLevel rotates the refresh token on every use,
so each new pair is committed to the connection's encrypted credentials the moment it
arrives — see auth.OAuth2RefreshToken). Every request carries `Version: 2021-07-28`.

Orders: the listing (`/payments/orders`, offset paging) has no line items, so each order's
details are fetched — concurrently, by a small thread pool inside read_page, every request
admitted by the location's shared rate limit (100 requests / 10 s, kept in Redis for all
workers). Only valid orders are synced: an order is valid when at least one of its items
is a valid product. Valid products are settings["valid_product_ids"] when given, else the
products available in store (`availableInStore` not false).

Tickets are derived (Stream.derived_from): for each order the engine stores, `derive`
makes one ticket per unit of each valid item, keyed "<order id>:<product id>:<n>" for
n = 1..quantity. Same order -> same ticket ids, so regeneration is idempotent; the engine
replaces an order's ticket set in the order's own transaction, so a lowered quantity
soft-deletes the surplus tickets and an order that disappears (or stops being valid)
takes its tickets with it. No second listing and no second fetch of any order.

Webhooks (Ed25519 `x-ghl-signature`, checked against settings["webhook_public_key"]):
OrderCreate / OrderStatusUpdate -> a record run of that order, which regenerates its
tickets.
"""
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from .. import net_guard
from . import pagination
from .auth import BearerAuth, OAuth2RefreshToken
from .base import Connector, Page, Param, Stream, register
from .errors import BadRecord, ConfigError, HttpError
from .settings_spec import SettingSpec

DEFAULT_BASE_URL = "https://services.leadconnectorhq.com"
API_VERSION = "2021-07-28"
# HighLevel allows 100 requests per 10 s per location. Our window is a quarter second longer:
# admission here and arrival there differ by a varying few milliseconds.
RATE_LIMIT = (100, 10.25)
PAGE_LIMIT = 100
# Details are rate-bound: the sooner a window's 100 requests have left, the sooner the next
# window opens. The client's connection pool is sized to match.
DETAIL_CONCURRENCY = 32
ORDER_EVENTS = ("OrderCreate", "OrderStatusUpdate")


@register
class HighLevelConnector(Connector):
    name = "highlevel"
    title = "HighLevel orders and tickets"
    streams = (
        Stream("products", primary_key="_id"),
        Stream("orders", primary_key="_id"),
        Stream("tickets", primary_key="id", derived_from="orders"),
    )
    settings_spec = (
        SettingSpec("location_id", "string", None, "the HighLevel sub-account (location) id", required=True),
        SettingSpec("valid_product_ids", "list", None, "products whose orders make tickets (blank: every listed one)"),
        SettingSpec("order_status", "string", None, "only orders with this status"),
        SettingSpec("payment_status", "string", None, "only orders with this payment status"),
        SettingSpec("webhook_public_key", "string", None, "HighLevel's Ed25519 public key (PEM or base64)"),
        SettingSpec("webhook_legacy_public_key", "string", None, "the legacy RSA key, while HighLevel still signs with it",
                    advanced=True),
        SettingSpec("detail_concurrency", "int", DETAIL_CONCURRENCY, "order details fetched at once", minimum=1,
                    maximum=DETAIL_CONCURRENCY, advanced=True),
        SettingSpec("base_url", "url", DEFAULT_BASE_URL, "the HighLevel API", advanced=True),
        SettingSpec("token_url", "url", None, "the OAuth token endpoint (default: base_url/oauth/token)", advanced=True),
        SettingSpec("rate_limit", "list", None, "[requests, seconds]: at most that many requests per window", advanced=True),
        SettingSpec("rate_limit_key", "string", None, "connections sharing this key share one rate limit", advanced=True),
    )
    credential_fields = ("token", "client_id", "client_secret", "refresh_token")
    run_params = (
        Param("since", "Orders created from", "date", help="range mode: orders created on or after this date"),
        Param("until", "Orders created until", "date", help="range mode: orders created up to this date"),
    )
    webhook_scheme = "highlevel"

    def __init__(self, settings, credentials, services):
        super().__init__(settings, credentials, services)
        self.location_id = self.settings.get("location_id")
        if not self.location_id:
            raise ConfigError("setting 'location_id' (the HighLevel sub-account) is required")
        self._client = None
        self._valid = None
        self._valid_lock = threading.RLock()  # valid_products() may read the products listing
        self._listed = None  # products read by the products stream in this run, from its first page

    # -- HTTP -------------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            base_url = self.settings.get("base_url") or DEFAULT_BASE_URL
            session = net_guard.session(pool_connections=1, pool_maxsize=DETAIL_CONCURRENCY)
            self._client = self.services.http(
                base_url, auth=self._auth(base_url), headers={"Version": API_VERSION}, session=session,
                rate_limit=tuple(self.settings.get("rate_limit") or RATE_LIMIT),
                rate_limit_key=self.settings.get("rate_limit_key") or f"highlevel:{self.location_id}")
        return self._client

    def _auth(self, base_url):
        c = self.credentials
        if c.get("token"):
            return BearerAuth(c["token"])
        if c.get("client_id") and c.get("client_secret"):
            return OAuth2RefreshToken(self.settings.get("token_url") or f"{base_url.rstrip('/')}/oauth/token",
                                      c["client_id"], c["client_secret"], credentials=c,
                                      update_credentials=self.services.update_credentials,
                                      form={"user_type": "Location"})
        raise ConfigError("the HighLevel connection needs a private integration 'token', "
                          "or OAuth 'client_id', 'client_secret' and 'refresh_token'")

    # -- reading ----------------------------------------------------------------------------

    def read_page(self, stream, request, state):
        if stream.name == "products":
            if request.mode == "record":
                raise ConfigError("HighLevel record runs sync one order; use the orders stream")
            return self._products_page(state)
        if stream.name == "orders":
            if request.mode == "record":
                return self._one_order(request.params.get("record_id"))
            return self._orders_page(request, state)
        raise ConfigError(f"stream {stream.name!r} is derived from orders and is never read directly")

    def _products_page(self, state):
        paging = pagination.OffsetLimit(page_size=PAGE_LIMIT, records_key="products", total_key="total.0.total",
                                        extra={"locationId": self.location_id})
        body = self.client.get_json("/products/", params=paging.params(state))
        records, next_state, total = paging.parse(body, state)
        # The orders stream needs the valid set: a complete products listing gives it for free.
        self._listed = [] if state is None else self._listed
        if self._listed is not None:
            self._listed.extend(records)
            if next_state is None and self.settings.get("valid_product_ids") is None:
                with self._valid_lock:
                    self._valid = self._valid if self._valid is not None else self._active(self._listed)
        return Page(records, next_state, total=total)

    def _orders_page(self, request, state):
        params = {"altId": self.location_id, "altType": "location"}
        for setting, param in (("order_status", "status"), ("payment_status", "paymentStatus")):
            if self.settings.get(setting):
                params[param] = self.settings[setting]
        if request.mode == "range":
            since, until = request.params.get("since"), request.params.get("until")
            if not (since or until):
                raise ConfigError("a HighLevel range run needs since and/or until (YYYY-MM-DD)")
            params.update({k: str(v)[:10] for k, v in (("startAt", since), ("endAt", until)) if v})
        paging = pagination.OffsetLimit(page_size=PAGE_LIMIT, records_key="data", total_key="totalCount", extra=params)
        body = self.client.get_json("/payments/orders", params=paging.params(state))
        summaries, next_state, total = paging.parse(body, state)
        ids = [s["_id"] for s in summaries if isinstance(s, dict) and isinstance(s.get("_id"), str) and s["_id"]]
        bad = [BadRecord(f"order listing item {i} has no _id") for i, s in enumerate(summaries)
               if not (isinstance(s, dict) and isinstance(s.get("_id"), str) and s["_id"])]
        valid = self.valid_products()
        workers = max(1, min(int(self.settings.get("detail_concurrency") or DETAIL_CONCURRENCY), DETAIL_CONCURRENCY))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="highlevel-order") as pool:
            details = list(pool.map(self._order_details, ids))
        records = [d for d in details if d is not None and self._is_valid(d, valid)]
        return Page(records, next_state, total=total, bad_records=bad)

    def _order_details(self, order_id):
        try:
            return self.client.get_json(f"/payments/orders/{quote(order_id, safe='')}",
                                        params={"altId": self.location_id, "altType": "location"})
        except HttpError as exc:
            if exc.status == 404:  # deleted between the listing and now
                return None
            raise

    def _one_order(self, order_id):
        if order_id in (None, ""):
            raise ConfigError("record mode needs a record_id")
        order = self._order_details(str(order_id))
        if order is None or not self._is_valid(order, self.valid_products()):
            return Page([], None, total=0)  # gone, or no longer valid: the engine removes it and its tickets
        return Page([order], None, total=1)

    def valid_products(self):
        """The set of product ids whose orders are synced (listed once per run)."""
        with self._valid_lock:
            if self._valid is None:
                configured = self.settings.get("valid_product_ids")
                if configured is not None:
                    if not isinstance(configured, list):
                        raise ConfigError("setting 'valid_product_ids' must be a list of product ids")
                    self._valid = {str(p) for p in configured}
                else:
                    self._valid = self._active(self._all_products())
            return self._valid

    def _all_products(self):
        products, state = [], None
        while True:
            page = self._products_page(state)
            products.extend(page.records)
            state = page.next_state
            if state is None:
                return products

    @staticmethod
    def _active(products):
        return {p["_id"] for p in products if isinstance(p, dict) and p.get("_id") and p.get("availableInStore") is not False}

    @staticmethod
    def _is_valid(order, valid):
        items = order.get("items") if isinstance(order, dict) else None
        return isinstance(items, list) and any(_product_id(item) in valid for item in items)

    # -- what the engine asks besides pages --------------------------------------------------

    def validate(self, stream, record):
        if stream.name != "orders":
            return
        items = record.get("items")
        if not isinstance(items, list):
            raise BadRecord("order has no items list")
        for index, item in enumerate(items):
            qty = item.get("qty") if isinstance(item, dict) else None
            if not isinstance(qty, int) or isinstance(qty, bool) or qty < 0:
                raise BadRecord(f"order item {index}: qty must be a non-negative integer")
            if not _product_id(item):
                raise BadRecord(f"order item {index}: product._id is missing")

    def derive(self, stream, parent_key, order):
        """Tickets of one order: `qty` tickets per valid product, ids "<order>:<product>:<n>"."""
        valid = self.valid_products()
        quantities, names = {}, {}
        for item in order.get("items") or []:
            product_id = _product_id(item)
            if product_id in valid:
                quantities[product_id] = quantities.get(product_id, 0) + item["qty"]
                names.setdefault(product_id, (item.get("product") or {}).get("name") or item.get("name"))
        snapshot = order.get("contactSnapshot") if isinstance(order.get("contactSnapshot"), dict) else {}
        return [{"id": f"{parent_key}:{product_id}:{n}", "order_id": parent_key, "product_id": product_id,
                 "ticket_type": names[product_id], "seq": n, "order_status": order.get("status"),
                 "contact_name": order.get("contactName"),
                 "contact_email": order.get("contactEmail") or snapshot.get("email"),
                 "order_created_at": order.get("createdAt")}
                for product_id, qty in quantities.items() for n in range(1, qty + 1)]

    def lists_all(self, stream, request):
        # Order filters in the settings narrow every listing; an unfiltered full run is complete.
        narrowed = self.settings.get("order_status") or self.settings.get("payment_status")
        return super().lists_all(stream, request) and not (narrowed and stream.name == "orders")

    def webhook_events(self, payload):
        if payload.get("type") not in ORDER_EVENTS:
            return []
        order_id = payload.get("_id") or payload.get("id")
        location = payload.get("locationId") or payload.get("altId")
        if not isinstance(order_id, str) or not order_id or (location and location != self.location_id):
            return []
        return [("orders", order_id, False)]


def _product_id(item):
    product = item.get("product") if isinstance(item, dict) else None
    product_id = product.get("_id") if isinstance(product, dict) else None
    return product_id if isinstance(product_id, str) and product_id else None
