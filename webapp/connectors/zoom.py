"""Zoom webinars (S2): streams `webinars`, `registrants`, `participants`.

Auth is Server-to-Server OAuth (credentials account_id, client_id, client_secret): a token
from the token endpoint, renewed shortly before it expires and once more on a 401; Zoom
issues no refresh tokens.

Modes:
- full: the whole listing; after success, records not seen are soft-deleted.
- incremental ("delta"): Zoom has no changed-since filter, so delta is the same complete
  listing, and only records whose content hash changed are written (the store compares
  hashes). Because the listing is complete, deletions are detected too (`lists_all`).
- range: webinars whose start_time lies in [since, until); Zoom cannot filter, so the
  listing is filtered here. Registrants and participants follow the webinars in range.
- record: one webinar by id (webhooks: webinar.created/updated/deleted), or one registrant
  by "<webinar id>:<registrant id>" (webhooks: webinar.registration_created/approved fetch
  it; registration_cancelled/denied soft-delete it, as the registrant listing — approved
  registrants — no longer has it).

Listings are paged by `next_page_token`, which is the checkpoint. Zoom's tokens expire
after 15 minutes, so a run resumed later (after a crash, or a long Retry-After) may hold a
dead token: the listing then restarts from its first page. Records already stored are
upserted by primary key and come back unchanged, so a restart duplicates nothing.

Webinars are checked by `validate` (S2's validate_webinar_data); invalid ones are skipped
and logged per record. Rate limits are Zoom's per-account categories (list webinars and
registrants: medium; one webinar: light; past participants: heavy), each shared by every
worker through Redis under a key derived from the account id.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import quote

from .auth import OAuth2ClientCredentials
from .base import Connector, Page, Param, Stream, register
from .dates import parse_time as _parse_time
from .errors import BadRecord, ConfigError, HttpError
from .settings_spec import SettingSpec

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.zoom.us/v2"
DEFAULT_TOKEN_URL = "https://zoom.us/oauth/token"  # noqa: S105  an endpoint's address, not a password
# Zoom's per-second limits by category (Pro). Our window is 5% longer than Zoom's second:
# admission here and arrival there differ by a varying few milliseconds.
RATE_LIMITS = {"light": (30, 1.05), "medium": (20, 1.05), "heavy": (10, 1.05)}
MAX_PAGE_SIZE = 300
# A listing whose page token keeps expiring is not making progress: give the run back.
MAX_RESTARTS = 3
WEBINAR_EVENTS = {"webinar.created": False, "webinar.updated": False, "webinar.deleted": True}
REGISTRANT_EVENTS = {"webinar.registration_created": False, "webinar.registration_approved": False,
                     "webinar.registration_cancelled": True, "webinar.registration_denied": True}
WEBINAR_TYPES = (5, 6, 9)  # webinar, recurring without fixed time, recurring with fixed time


@register
class ZoomConnector(Connector):
    name = "zoom"
    title = "Zoom webinars"
    streams = (
        Stream("webinars", primary_key="id"),
        Stream("registrants", primary_key="key"),  # "<webinar id>:<registrant id>"
        Stream("participants", primary_key="key"),  # "<webinar id>:<participant id>:<join time>"
    )
    settings_spec = (
        SettingSpec("user_id", "string", "me", "whose webinars: a Zoom user id or email, or me"),
        SettingSpec("page_size", "int", MAX_PAGE_SIZE, "records per request", minimum=1, maximum=MAX_PAGE_SIZE,
                    advanced=True),
        SettingSpec("child_concurrency", "int", 4, "webinars whose registrants and participants are read at once",
                    minimum=1, maximum=16, advanced=True),
        SettingSpec("base_url", "url", DEFAULT_BASE_URL, "the Zoom API", advanced=True),
        SettingSpec("token_url", "url", DEFAULT_TOKEN_URL, "the Zoom OAuth token endpoint", advanced=True),
        SettingSpec("rate_limits", "json", None, 'per category, e.g. {"light": [30, 1.05]}', advanced=True),
        SettingSpec("rate_limit_key", "string", None, "connections sharing this key share one rate limit", advanced=True),
    )
    credential_fields = ("account_id", "client_id", "client_secret", "webhook_secret_token")
    run_params = (
        Param("since", "Start time from", "date", help="range mode: webinars starting on or after this date"),
        Param("until", "Start time before", "date", help="range mode: webinars starting before this date"),
    )
    webhook_scheme = "zoom"

    def __init__(self, settings, credentials, services):
        super().__init__(settings, credentials, services)
        self.page_size = min(MAX_PAGE_SIZE, max(1, int(self.settings.get("page_size") or MAX_PAGE_SIZE)))
        self.user_id = str(self.settings.get("user_id") or "me")
        self._clients = {}
        self._auth = None

    # -- HTTP -------------------------------------------------------------------------------

    def _client(self, category):
        if category not in self._clients:
            c = self.credentials
            missing = [k for k in ("account_id", "client_id", "client_secret") if not c.get(k)]
            if missing:
                raise ConfigError(f"the Zoom connection lacks credential(s) {', '.join(missing)}")
            if self._auth is None:
                self._auth = OAuth2ClientCredentials(
                    self.settings.get("token_url") or DEFAULT_TOKEN_URL, c["client_id"], c["client_secret"],
                    form={"grant_type": "account_credentials", "account_id": c["account_id"]}, basic_auth=True)
            limits = {**RATE_LIMITS, **(self.settings.get("rate_limits") or {})}
            prefix = self.settings.get("rate_limit_key") or f"zoom:{c['account_id']}"
            self._clients[category] = self.services.http(
                self.settings.get("base_url") or DEFAULT_BASE_URL, auth=self._auth,
                rate_limit=tuple(limits[category]), rate_limit_key=f"{prefix}:{category}")
        return self._clients[category]

    # -- reading ----------------------------------------------------------------------------

    def read_page(self, stream, request, state):
        if request.mode == "record":
            if stream.name == "registrants":
                return self._one_registrant(request.params.get("record_id"))
            if stream.name != "webinars":
                raise ConfigError("Zoom record runs sync one webinar or one registrant")
            return self._one_webinar(request.params.get("record_id"))
        window = _window(request)
        if stream.name == "webinars":
            return self._webinars_page(state, window)
        return self._children_page(stream, state, window)

    def _one_webinar(self, record_id):
        if record_id in (None, ""):
            raise ConfigError("record mode needs a record_id")
        try:
            webinar = self._client("light").get_json(f"/webinars/{quote(str(record_id), safe='')}")
        except HttpError as exc:
            if exc.status == 404:  # deleted at Zoom: the engine soft-deletes our copy
                return Page([], None, total=0)
            raise
        return Page([webinar], None, total=1)

    def _one_registrant(self, record_id):
        webinar_id, _, registrant_id = str(record_id or "").partition(":")
        if not (webinar_id.isdigit() and registrant_id):
            raise ConfigError("a registrant record run needs a record_id like <webinar id>:<registrant id>")
        path = f"/webinars/{webinar_id}/registrants/{quote(registrant_id, safe='')}"
        try:
            registrant = self._client("light").get_json(path)
        except HttpError as exc:
            if exc.status == 404:  # the registrant or its webinar is gone: soft-delete our copy
                return Page([], None, total=0)
            raise
        return Page([_registrant(registrant, int(webinar_id))], None, total=1)

    def _listing(self, state):
        """One page of the webinar listing at state's token; restarts from the first page
        when the token has expired. Returns (body, restarts)."""
        token, restarts = (state or {}).get("token"), (state or {}).get("restarts", 0)
        path = f"/users/{quote(self.user_id, safe='@')}/webinars"
        params = {"page_size": self.page_size}
        try:
            body = self._client("medium").get_json(path, params={**params, **({"next_page_token": token} if token else {})})
        except HttpError as exc:
            if not token or restarts >= MAX_RESTARTS:
                raise
            # Zoom refuses a page token older than 15 minutes (HTTP 400, code 300).
            log.warning("zoom: page token refused (%s); restarting the webinar listing from its first page", exc)
            restarts += 1
            body = self._client("medium").get_json(path, params=params)
        if not isinstance(body, dict) or not isinstance(body.get("webinars"), list):
            raise ConfigError("Zoom answered a webinar listing without a 'webinars' list")
        return body, restarts

    def _webinars_page(self, state, window):
        body, restarts = self._listing(state)
        records = [w for w in body["webinars"] if window is None or _in_window(w, window)]
        token = body.get("next_page_token") or None
        total = body.get("total_records") if window is None else None
        return Page(records, {"token": token, "restarts": restarts} if token else None,
                    total=total if isinstance(total, int) else None)

    def _children_page(self, stream, state, window):
        """Registrants or participants of a batch of webinars. State: the webinar ids still
        to do from the current listing page, and the token of the listing page after it."""
        restarts = (state or {}).get("restarts", 0)
        if not state or not state.get("pending"):
            body, restarts = self._listing({"token": state["next"], "restarts": restarts} if state else None)
            now = datetime.now(timezone.utc)
            pending = [w["id"] for w in body["webinars"] if _usable_id(w) and (window is None or _in_window(w, window))
                       and (stream.name != "participants" or _started_before(w, now))]
            following = body.get("next_page_token") or ""
        else:
            pending, following = list(state["pending"]), state.get("next") or ""
        concurrency = max(1, int(self.settings.get("child_concurrency") or 4))
        batch, rest = pending[:concurrency], pending[concurrency:]
        fetch = self._registrants if stream.name == "registrants" else self._participants
        records = []
        if batch:
            with ThreadPoolExecutor(max_workers=len(batch), thread_name_prefix=f"zoom-{stream.name}") as pool:
                for found in pool.map(fetch, batch):
                    records.extend(found)
        more = bool(rest or following)
        return Page(records, {"pending": rest, "next": following, "restarts": restarts} if more else None)

    def _all_pages(self, category, path, key):
        items, token = [], None
        while True:
            params = {"page_size": MAX_PAGE_SIZE, **({"next_page_token": token} if token else {})}
            body = self._client(category).get_json(path, params=params)
            if not isinstance(body, dict) or not isinstance(body.get(key), list):
                raise ConfigError(f"Zoom answered {path} without a {key!r} list")
            items.extend(body[key])
            token = body.get("next_page_token")
            if not token:
                return items

    def _registrants(self, webinar_id):
        try:
            found = self._all_pages("medium", f"/webinars/{webinar_id}/registrants", "registrants")
        except HttpError as exc:
            if exc.status == 404:  # the webinar went away meanwhile
                return []
            raise
        return [_registrant(r, webinar_id) for r in found if isinstance(r, dict)]

    def _participants(self, webinar_id):
        try:
            found = self._all_pages("heavy", f"/past_webinars/{webinar_id}/participants", "participants")
        except HttpError as exc:
            if exc.status in (400, 404):  # not held (yet), or no report: no participants
                return []
            raise
        out = []
        for p in found:
            if isinstance(p, dict):
                who = p.get("id") or p.get("user_id") or p.get("user_email") or p.get("name")
                out.append(dict(p, webinar_id=webinar_id, key=f"{webinar_id}:{who}:{p.get('join_time')}"))
        return out

    # -- what the engine asks besides pages --------------------------------------------------

    def lists_all(self, stream, request):
        # Delta is a complete listing too (see the module docstring); range is not.
        return request.mode in ("full", "incremental") and not (request.params.get("since") or request.params.get("until"))

    def validate(self, stream, record):
        if stream.name == "webinars":
            validate_webinar_data(record)

    def webhook_events(self, payload):
        event = payload.get("event")
        body = payload.get("payload") if isinstance(payload.get("payload"), dict) else {}
        if body.get("account_id") and self.credentials.get("account_id") and \
                body["account_id"] != self.credentials["account_id"]:
            return []  # another account's event: not ours to sync
        obj = body.get("object") if isinstance(body.get("object"), dict) else {}
        if obj.get("id") in (None, ""):
            return []
        if event in WEBINAR_EVENTS:
            return [("webinars", str(obj["id"]), WEBINAR_EVENTS[event])]
        registrant = obj.get("registrant") if isinstance(obj.get("registrant"), dict) else {}
        if event in REGISTRANT_EVENTS and registrant.get("id") not in (None, ""):
            return [("registrants", f"{obj['id']}:{registrant['id']}", REGISTRANT_EVENTS[event])]
        return []


def _registrant(registrant, webinar_id):
    """A registrant as stored: Zoom's object plus its webinar and our key."""
    return dict(registrant, webinar_id=webinar_id, key=f"{webinar_id}:{registrant.get('id')}")


def validate_webinar_data(webinar):
    """S2's validate_webinar_data: required fields and their types. Raises BadRecord."""
    problems = []
    webinar_id = webinar.get("id")
    if not isinstance(webinar_id, int) or isinstance(webinar_id, bool) or webinar_id <= 0:
        problems.append("id must be a positive integer")
    for field in ("uuid", "topic"):
        if not isinstance(webinar.get(field), str) or not webinar[field].strip():
            problems.append(f"{field} is required (non-empty text)")
    kind = webinar.get("type")
    if kind not in WEBINAR_TYPES or isinstance(kind, bool):
        problems.append(f"type must be one of {', '.join(map(str, WEBINAR_TYPES))}")
    if kind != 6 or "start_time" in webinar:  # recurring webinars without a fixed time have none
        if _parse_time(webinar.get("start_time")) is None:
            problems.append("start_time must be an ISO-8601 date-time")
    duration = webinar.get("duration")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool) or duration < 0):
        problems.append("duration must be a non-negative integer (minutes)")
    for field in ("timezone", "host_id", "agenda", "join_url"):
        if webinar.get(field) is not None and not isinstance(webinar[field], str):
            problems.append(f"{field} must be text")
    if problems:
        raise BadRecord("invalid webinar: " + "; ".join(problems))


def _window(request):
    """(since, until) as aware datetimes for range mode, else None."""
    if request.mode != "range":
        return None
    since, until = request.params.get("since"), request.params.get("until")
    if not (since or until):
        raise ConfigError("a Zoom range run needs since and/or until (dates or ISO date-times)")
    bounds = []
    for name, value in (("since", since), ("until", until)):
        if value in (None, ""):
            bounds.append(None)
            continue
        moment = _parse_time(str(value)) if len(str(value)) > 10 else _parse_time(f"{value}T00:00:00Z")
        if moment is None:
            raise ConfigError(f"{name}={value!r} is not a date (2026-01-31) or an ISO date-time")
        bounds.append(moment)
    return tuple(bounds)


def _in_window(webinar, window):
    start = _parse_time(webinar.get("start_time")) if isinstance(webinar, dict) else None
    if start is None:
        return True  # let validation reject it, visibly, rather than drop it silently
    since, until = window
    return (since is None or start >= since) and (until is None or start < until)


def _usable_id(webinar):
    return isinstance(webinar, dict) and isinstance(webinar.get("id"), int) and not isinstance(webinar.get("id"), bool)


def _started_before(webinar, now):
    start = _parse_time(webinar.get("start_time"))
    return start is not None and start <= now
