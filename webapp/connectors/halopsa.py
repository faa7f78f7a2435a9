"""HaloPSA tickets and agents (S5): streams `agents`, `tickets`.

Auth: client credentials (credentials client_id, client_secret) posted as form fields to
`{base_url}/auth/token` (with `?tenant=` when settings["tenant"] is set), scope "all"; no
refresh token, a new token is requested before expiry and once on a 401.

Fiscal years (per connection): settings fiscal_year_start_month (default 7) and
fiscal_year_start_day (default 1); a fiscal year is named by the calendar year it ends in
(settings fiscal_year_named_by "end", or "start"). settings["fiscal_years"] lists the
years the app has (the admin's Sync now selector shows them). The "latest fiscal year" is
the newest of those and the one containing today. A run with params {"fiscal_year": Y}
that names a year not yet listed adds it — that is how an app event `fiscal_year.created`
(settings["event_triggers"] maps it to a run with that parameter) makes the new year the
latest one for the hourly schedule.

Ticket runs:
- params fiscal_year=Y (any mode): the tickets that occurred in year Y;
- range with since/until: that date window;
- incremental (what the hourly schedule runs, settings["schedule_mode"] = "incremental"):
  the latest fiscal year, resolved when the run starts and kept in its checkpoint;
- full without parameters: every ticket; only this one detects deletions.

Tickets are paged with `pageinate=true&page_size<=100&page_no=N` (Halo ignores page_size
and page_no without pageinate). The first page tells the record count; after it, several
pages are fetched at once by a small thread pool, each request admitted by the shared
rate limit. Agents come from `/api/Agent`, a bare array or {record_count, agents}.

Webhooks (scheme "halopsa": Basic-auth credentials webhook_username / webhook_password, no
HMAC): a ticket's created, updated or closed event becomes a record run that fetches the
ticket (`GET /api/Tickets/{id}`) and stores it when it occurred within the fiscal years this
connection syncs — from the first year of settings["fiscal_years"] to the latest fiscal
year — so a webhook never brings in a ticket the hourly sync would not list. A ticket Halo
no longer has (404) is soft-deleted. Halo's payload shape is configurable and not pinned
down (PROVIDERS.md), so the ticket id is taken from `ticket.id`, `ticket_id`, `object_id`
or a top-level `id`, whichever the body has.

Agent mappings (Halo agent id -> app user) are settings["agent_mappings"], stored with the
connection in the database and edited with its settings in the admin: every synced ticket
and agent carries `app_user` (None when the agent is not mapped).
"""
import math
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from urllib.parse import urlencode, urlsplit

from .auth import OAuth2ClientCredentials
from .base import Connector, Page, Param, Stream, register
from .errors import BadRecord, ConfigError, HttpError
from .settings_spec import SettingSpec

PAGE_SIZE = 100
PAGE_CONCURRENCY = 8
# Throttling is unconfirmed (PROVIDERS.md): assume ~500 requests / 3 min, with a 2 s margin
# for the gap between our admission and Halo's count. 429s are waited out (Retry-After).
RATE_LIMIT = (500, 182)


@register
class HaloPSAConnector(Connector):
    name = "halopsa"
    title = "HaloPSA tickets and agents"
    streams = (Stream("agents", primary_key="id"), Stream("tickets", primary_key="id"))
    settings_spec = (
        SettingSpec("base_url", "url", None, "the Halo URL, e.g. https://yourtenant.halopsa.com", required=True),
        SettingSpec("tenant", "string", None, "the tenant name, for hosted Halo"),
        SettingSpec("fiscal_year_start_month", "int", 7, "month the fiscal year starts in", minimum=1, maximum=12),
        SettingSpec("fiscal_year_start_day", "int", 1, "day the fiscal year starts on", minimum=1, maximum=28),
        SettingSpec("fiscal_year_named_by", "choice", "end", "a fiscal year is named by the year it ends or starts in",
                    choices=("end", "start")),
        SettingSpec("fiscal_years", "list", None, "the fiscal years the app has, e.g. [2025, 2026]"),
        SettingSpec("agent_mappings", "json", None, "Halo agent id -> app user, a JSON object"),
        SettingSpec("schedule_mode", "choice", "full", "what a scheduled run does", choices=("full", "incremental")),
        SettingSpec("event_triggers", "json", None, "app event type -> run parameters (docs/CONNECTORS.md)",
                    advanced=True),
        SettingSpec("page_size", "int", PAGE_SIZE, "tickets per request", minimum=1, maximum=PAGE_SIZE, advanced=True),
        SettingSpec("page_concurrency", "int", PAGE_CONCURRENCY, "pages fetched at once", minimum=1, maximum=8,
                    advanced=True),
        SettingSpec("rate_limit", "list", None, "[requests, seconds]: at most that many requests per window", advanced=True),
        SettingSpec("rate_limit_key", "string", None, "connections sharing this key share one rate limit", advanced=True),
    )
    credential_fields = ("client_id", "client_secret", "webhook_username", "webhook_password")
    supported_modes = ("full", "incremental", "range", "record")
    full_sync_label = "all tickets (full)"
    run_params = (
        Param("fiscal_year", "Fiscal year", "choice", choices_setting="fiscal_years",
              help="sync the tickets of this fiscal year"),
        Param("since", "Occurred from", "date", help="range mode without a fiscal year"),
        Param("until", "Occurred before", "date", help="range mode without a fiscal year"),
    )
    webhook_scheme = "halopsa"

    def __init__(self, settings, credentials, services):
        super().__init__(settings, credentials, services)
        base_url = self.settings.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError("setting 'base_url' must be the Halo URL, e.g. https://yourtenant.halopsa.com")
        self.base_url = base_url.rstrip("/")
        self.fiscal = FiscalCalendar.from_settings(self.settings)
        self.page_size = max(1, min(PAGE_SIZE, int(self.settings.get("page_size") or PAGE_SIZE)))
        mappings = self.settings.get("agent_mappings") or {}
        if not isinstance(mappings, dict):
            raise ConfigError("setting 'agent_mappings' must map Halo agent ids to app users")
        self.agent_mappings = {str(k): v for k, v in mappings.items()}
        self._client = None

    @property
    def client(self):
        if self._client is None:
            c = self.credentials
            if not (c.get("client_id") and c.get("client_secret")):
                raise ConfigError("the HaloPSA connection needs client_id and client_secret credentials")
            tenant = self.settings.get("tenant")
            token_url = f"{self.base_url}/auth/token" + (f"?{urlencode({'tenant': tenant})}" if tenant else "")
            auth = OAuth2ClientCredentials(token_url, c["client_id"], c["client_secret"],
                                           form={"scope": "all"}, basic_auth=False)
            key = self.settings.get("rate_limit_key") or f"halopsa:{urlsplit(self.base_url).netloc}:{tenant or ''}"
            self._client = self.services.http(self.base_url, auth=auth, rate_limit_key=key,
                                              rate_limit=tuple(self.settings.get("rate_limit") or RATE_LIMIT))
        return self._client

    # -- reading ----------------------------------------------------------------------------

    def read_page(self, stream, request, state):
        if request.mode == "record":
            if stream.name != "tickets":
                raise ConfigError("HaloPSA record runs sync one ticket; use the tickets stream")
            return self._one_ticket(request.params.get("record_id"))
        if stream.name == "agents":
            return self._agents()
        if state is None:
            window = self.window(request)
            return self._first_tickets_page(window)
        return self._more_tickets(state)

    def _agents(self):
        body = self.client.get_json("/api/Agent")
        agents = body.get("agents") if isinstance(body, dict) else body
        if not isinstance(agents, list):
            raise ConfigError("Halo answered /api/Agent with neither an array nor {agents: [...]}")
        return Page([self._mapped(a, a.get("id")) if isinstance(a, dict) else a for a in agents], None,
                    total=len(agents))

    def _one_ticket(self, record_id):
        """The ticket of a webhook, when it occurred within the synced fiscal years (else it
        is skipped, and logged as such); an empty page when Halo no longer has it."""
        if not (isinstance(record_id, (str, int)) and str(record_id).isdigit()):
            raise ConfigError(f"a HaloPSA ticket id is a number, not {str(record_id)[:40]!r}")
        try:
            ticket = self.client.get_json(f"/api/Tickets/{int(record_id)}")
        except HttpError as exc:
            if exc.status == 404:  # deleted at Halo: the engine soft-deletes our copy
                return Page([], None, total=0)
            raise
        if not isinstance(ticket, dict):
            raise ConfigError("Halo answered /api/Tickets/{id} with something other than a ticket object")
        start, end = self.synced_window()
        occurred = str(ticket.get("dateoccurred") or "")[:10]
        if _ISO_DAY.match(occurred) and not start <= occurred < end:
            skipped = BadRecord(f"ticket occurred on {occurred}, outside the fiscal years this connection syncs "
                                f"({start} to {end}): not stored", key=str(record_id))
            return Page([], None, total=1, bad_records=[skipped])
        return Page([self._mapped(ticket, ticket.get("agent_id"))], None, total=1)

    def _tickets_params(self, window, page_no):
        params = {"pageinate": "true", "page_size": self.page_size, "page_no": page_no, "order": "id"}
        if window is not None:
            start, end = window
            params["datesearch"] = "dateoccurred"
            if start:
                params["startdate"] = f"{start}T00:00:00"
            if end:  # Halo's enddate is inclusive: the last second before the window's end
                params["enddate"] = f"{date.fromisoformat(end) - timedelta(days=1)}T23:59:59"
        return params

    def _fetch(self, window, page_no):
        body = self.client.get_json("/api/Tickets", params=self._tickets_params(window, page_no))
        if not isinstance(body, dict) or not isinstance(body.get("tickets"), list):
            raise ConfigError("Halo answered /api/Tickets without a 'tickets' list")
        count = body.get("record_count")
        return body["tickets"], count if isinstance(count, int) and not isinstance(count, bool) else None

    def _first_tickets_page(self, window):
        tickets, count = self._fetch(window, 1)
        pages = math.ceil(count / self.page_size) if count is not None else None
        state = {"page": 2, "pages": pages, "window": list(window) if window else None}
        return self._page(tickets, state, full=len(tickets) == self.page_size, total=count)

    def _more_tickets(self, state):
        window = tuple(state["window"]) if state.get("window") else None
        first, pages = state["page"], state.get("pages")
        # Known page count: fetch a batch of pages at once. Unknown: one at a time.
        last = min(first + self._concurrency() - 1, pages) if pages and first <= pages else first
        numbers = list(range(first, last + 1))
        with ThreadPoolExecutor(max_workers=len(numbers), thread_name_prefix="halopsa-page") as pool:
            results = list(pool.map(lambda n: self._fetch(window, n), numbers))
        tickets = [t for found, _ in results for t in found]
        return self._page(tickets, dict(state, page=last + 1), full=len(results[-1][0]) == self.page_size)

    def _page(self, tickets, state, full, total=None):
        # More while the record count says so; past it only while pages come back full
        # (tickets created since the count was read pushed more pages behind it).
        more = (state["pages"] is not None and state["page"] <= state["pages"]) or full
        return Page([self._mapped(t, t.get("agent_id")) if isinstance(t, dict) else t for t in tickets],
                    state if more else None, total=total)

    def _concurrency(self):
        return max(1, min(8, int(self.settings.get("page_concurrency") or PAGE_CONCURRENCY)))

    def _mapped(self, record, agent_id):
        return dict(record, app_user=self.agent_mappings.get(str(agent_id)) if agent_id is not None else None)

    # -- fiscal years ------------------------------------------------------------------------

    def window(self, request):
        """[start, end) of the tickets this run lists, as ISO dates; None for all of them."""
        params = request.params
        year = params.get("fiscal_year")
        if year not in (None, ""):
            year = self.fiscal.parse_year(year)
            self._remember(year)
            return self.fiscal.range(year)
        if request.mode == "range":
            since, until = params.get("since"), params.get("until")
            if not (since or until):
                raise ConfigError("a HaloPSA range run needs a fiscal_year, or since and/or until dates")
            return (_iso_date(since, "since") if since else None, _iso_date(until, "until") if until else None)
        if request.mode == "incremental":
            return self.fiscal.range(self.latest_fiscal_year())
        return None

    def synced_window(self, today=None):
        """[start, end) of the fiscal years this connection syncs, as ISO dates: from the
        first year the app lists to the latest fiscal year (what webhooks may bring in)."""
        latest = self.latest_fiscal_year(today)
        first = min([self.fiscal.parse_year(y) for y in self.settings.get("fiscal_years") or []] + [latest])
        return self.fiscal.range(first)[0], self.fiscal.range(latest)[1]

    def latest_fiscal_year(self, today=None):
        """The newest fiscal year the app has, or the one containing today if that is newer."""
        known = [self.fiscal.parse_year(y) for y in self.settings.get("fiscal_years") or []]
        return max(known + [self.fiscal.year_of(today or date.today())])

    def _remember(self, year):
        """A fiscal year a run asks for exists at the app: list it (the admin selector shows
        it, and it counts for the latest fiscal year). Committed at once, on its own."""
        if year in {self.fiscal.parse_year(y) for y in self.settings.get("fiscal_years") or []}:
            return

        def add(settings):
            years = list(settings.get("fiscal_years") or [])
            if year in {self.fiscal.parse_year(y) for y in years}:
                return None
            return {"fiscal_years": sorted(years + [year])}

        self.settings = self.services.update_settings(add)

    # -- what the engine asks besides pages --------------------------------------------------

    def lists_all(self, stream, request):
        if stream.name == "agents":
            return request.mode == "full"
        return request.mode == "full" and not any(request.params.get(p) for p in ("fiscal_year", "since", "until"))

    def validate(self, stream, record):
        if stream.name != "tickets":
            return
        if not isinstance(record.get("id"), int) or isinstance(record.get("id"), bool):
            raise BadRecord("ticket id must be an integer")
        occurred = record.get("dateoccurred")
        try:
            datetime.fromisoformat(str(occurred).replace("Z", "+00:00"))
        except ValueError:
            raise BadRecord(f"dateoccurred {str(occurred)[:40]!r} is not an ISO date-time") from None

    def webhook_events(self, payload):
        ticket_id = webhook_ticket_id(payload)
        if ticket_id is None:
            return []  # not a ticket event: nothing this connector syncs
        event = str(payload.get("event") or payload.get("event_name") or payload.get("type") or "").lower()
        return [("tickets", ticket_id, "delet" in event)]


def webhook_ticket_id(payload):
    """The ticket id a Halo webhook body names, or None (see the module docstring)."""
    ticket = payload.get("ticket")
    candidates = [ticket.get("id") if isinstance(ticket, dict) else None, payload.get("ticket_id"),
                  payload.get("object_id"), payload.get("id")]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return str(value)
        if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
            return str(int(value))
    return None


class FiscalCalendar:
    """Fiscal years starting on a given month and day, named by the year they end in
    (or start in)."""

    def __init__(self, start_month=7, start_day=1, named_by="end"):
        if not (isinstance(start_month, int) and 1 <= start_month <= 12):
            raise ConfigError("fiscal_year_start_month must be a month number, 1-12")
        if not (isinstance(start_day, int) and 1 <= start_day <= 28):
            raise ConfigError("fiscal_year_start_day must be a day number, 1-28 (valid in every month)")
        if named_by not in ("end", "start"):
            raise ConfigError("fiscal_year_named_by must be 'end' or 'start'")
        self.start_month, self.start_day, self.named_by = start_month, start_day, named_by

    @classmethod
    def from_settings(cls, settings):
        try:
            month = int(settings.get("fiscal_year_start_month") or 7)
            day = int(settings.get("fiscal_year_start_day") or 1)
        except (TypeError, ValueError):
            raise ConfigError("fiscal_year_start_month and fiscal_year_start_day must be numbers") from None
        return cls(month, day, settings.get("fiscal_year_named_by") or "end")

    @property
    def _shift(self):
        # A year starting on 1 January is the calendar year, whichever way it is named.
        return 1 if self.named_by == "end" and (self.start_month, self.start_day) != (1, 1) else 0

    def range(self, year):
        """[start, end) of fiscal year `year`, as ISO dates."""
        start = date(year - self._shift, self.start_month, self.start_day)
        return start.isoformat(), date(start.year + 1, self.start_month, self.start_day).isoformat()

    def year_of(self, day):
        started = day.year if (day.month, day.day) >= (self.start_month, self.start_day) else day.year - 1
        return started + self._shift

    @staticmethod
    def parse_year(value):
        try:
            year = int(str(value).strip())
        except (TypeError, ValueError):
            raise ConfigError(f"fiscal year {value!r} is not a year like 2026") from None
        if not 1900 <= year <= 2200:
            raise ConfigError(f"fiscal year {year} is out of range")
        return year


_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date(value, name):
    try:
        return date.fromisoformat(str(value)[:10]).isoformat()
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a date like 2026-01-31") from None
