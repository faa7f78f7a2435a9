"""What a declared connector does: one class, DeclaredConnector, that reads a validated
connector file (docs/CONNECTORS.md, 'Add a provider in one file') and behaves like a Python
connector. The loader (this package's __init__) makes one subclass per file.

Everything a file can say maps onto the shared parts: auth.py's strategies, pagination.py's
strategies (with JMESPath selectors, compiled once), Services.http's client with its rate
limits, retries and error classes, and mapping.py's templates.
"""
import math
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from urllib.parse import quote, urlencode

import fastjsonschema
import jmespath
import jsonschema

from .. import pagination
from ..auth import BasicAuth, BearerAuth, HeaderKeyAuth, OAuth2ClientCredentials, OAuth2RefreshToken
from ..base import Connector, Page, ReadRequest
from ..dates import parse_time as _parse_time
from ..errors import AuthError, BadRecord, ConfigError, HttpError, RateLimited, TransientError
from ..http import parse_json
from ..mapping import MappingError, render
from .settings import coerce_settings

ERROR_CLASSES = {"transient": TransientError, "rate_limited": RateLimited, "auth": AuthError, "config": ConfigError}


_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class Selector:
    """A compiled JMESPath expression; callable on a body (pagination.dig takes it). A plain
    field path ("record.agent_id") is read directly: the same answer (null for anything
    missing or not an object), without the interpreter, once per record."""

    def __init__(self, expression):
        self.expression = expression
        compiled = jmespath.compile(expression)
        self.record_field = None  # "record.x": the transform reads x off the record itself
        if _FIELD_PATH.fullmatch(expression):
            steps = expression.split(".")
            if len(steps) == 2 and steps[0] == "record":
                self.record_field = steps[1]

            def search(value):
                for step in steps:
                    if not isinstance(value, dict):
                        return None
                    value = value.get(step)
                return value

            self._search = search
        else:
            self._search = compiled.search

    def __call__(self, value):
        return self._search(value)


def selector(expression):
    return Selector(expression) if expression else None


class DeclaredConnector(Connector):
    """Set by the loader on each subclass: `spec` (the file, validated), `source` (its path)."""

    spec: dict = {}
    source: str = ""

    def __init__(self, settings, credentials, services):
        super().__init__(settings, credentials, services)
        self.settings = coerce_settings(self.settings_spec, self.settings)
        missing = [name for name, c in (self.spec.get("credentials") or {}).items()
                   if c.get("required") and not self.credentials.get(name)]
        if missing:
            raise ConfigError(f"the {self.title or self.name} connection lacks credential(s) {', '.join(missing)}")
        self._context = {"settings": self.settings, "credentials": self.credentials}
        self.base_url = str(self._render(self.spec["base_url"], "base_url")).rstrip("/")
        self._auth = None
        self._clients = {}
        self._plans = {name: _StreamPlan(name, raw, self) for name, raw in self.spec["streams"].items()}

    # -- templates, auth and clients ---------------------------------------------------------

    def _render(self, template, where, **extra):
        return render(template, {**self._context, **extra}, where)

    def _auth_strategy(self):
        raw = self.spec.get("auth") or {"type": "none"}
        kind = raw["type"]
        r = lambda field: self._render(raw[field], f"auth.{field}")  # noqa: E731
        if kind == "api_key":
            return HeaderKeyAuth(raw["name"], r("key")) if raw.get("in", "header") == "header" else None
        if kind == "bearer":
            return BearerAuth(r("token"))
        if kind == "basic":
            return BasicAuth(r("username"), r("password"))
        if kind in ("oauth2_client_credentials", "oauth2_refresh_token"):
            token_url = r("token_url")
            query = render(raw.get("token_params") or {}, self._context, "auth.token_params")
            if query:
                token_url += ("&" if "?" in token_url else "?") + urlencode(query)
            form = render(raw.get("form") or {}, self._context, "auth.form")
            if kind == "oauth2_refresh_token":
                return OAuth2RefreshToken(token_url, r("client_id"), r("client_secret"), credentials=self.credentials,
                                          update_credentials=self.services.update_credentials, form=form)
            return OAuth2ClientCredentials(token_url, r("client_id"), r("client_secret"), form=form,
                                           basic_auth=raw.get("client_auth", "basic") == "basic")
        return None

    def _query_key(self):
        """An API key sent as a query parameter ({} for any other auth)."""
        raw = self.spec.get("auth") or {}
        if raw.get("type") == "api_key" and raw.get("in") == "query":
            return {raw["name"]: self._render(raw["key"], "auth.key")}
        return {}

    def client(self, budget=None):
        """The HTTP client of one rate-limit budget (None: the connector's only one, if any)."""
        limits = self.spec.get("rate_limits")
        if budget is None and limits:
            budget = next(iter(limits["budgets"]))
        if budget not in self._clients:
            if self._auth is None:
                self._auth = self._auth_strategy() or False
            rate_limit = key = None
            if limits:
                budgets = {**limits["budgets"], **(self.settings.get(limits.get("budgets_setting")) or {})}
                rate_limit = tuple(budgets[budget])
                key = self._rate_limit_key(limits, budget)
            errors = self.spec.get("errors") or {}
            self._clients[budget] = self.services.http(
                self.base_url, auth=self._auth or None, rate_limit=rate_limit, rate_limit_key=key,
                headers=render(self.spec.get("headers") or {}, self._context, "headers"),
                retry_after_header=errors.get("retry_after_header", "Retry-After"))
        return self._clients[budget]

    def _rate_limit_key(self, limits, budget):
        keys = limits.get("key") or [f"{self.name}:{{budget}}"]
        for template in [keys] if isinstance(keys, str) else keys:
            try:
                return str(self._render(template, "rate_limits.key", budget=budget))
            except MappingError:
                continue  # a template naming an absent value gives way to the next
        raise ConfigError(f"none of the rate_limits.key templates of {self.name!r} could be filled in")

    def fetch(self, request, budget, path, params, body=None, ignore=()):
        """One request: (response or None when its status is in `ignore`, parsed body)."""
        params = {**params, **self._query_key()}
        try:
            resp = self.client(budget).request(request.get("method", "GET"), path, params=params or None,
                                               json=body, headers=render(request.get("headers") or {}, self._context,
                                                                         "request.headers"))
        except HttpError as exc:
            if exc.status in ignore:
                return None, None
            raise self._mapped(exc) from None
        return resp, parse_json(resp)

    def _mapped(self, exc):
        for rule in (self.spec.get("errors") or {}).get("map") or ():
            if rule["status"] == exc.status and rule.get("body_contains", "") in str(exc):
                return ERROR_CLASSES[rule["as"]](str(exc))
        return exc

    # -- reading ----------------------------------------------------------------------------

    def read_page(self, stream, request, state):
        plan = self._plans.get(stream.name)
        if plan is None:
            self.stream(stream.name)  # raises the ConfigError naming the known streams
        if request.mode == "record":
            return plan.one_record(request.params.get("record_id"))
        if plan.parent is not None:
            return plan.children_page(request, state)
        records, next_state, total = plan.listing_page(request, state)
        return Page(plan.transformed(records), next_state, total=total)

    def lists_all(self, stream, request):
        if any(request.params.get(p) for p in ("since", "until", "record_id")):
            return False
        plan = self._plans[stream.name]
        if plan.parent is not None:  # children are listed as completely as their parents
            plan = self._plans[plan.parent["stream"]]
        relists = (plan.raw.get("incremental") or {}).get("type") == "relist"
        return request.mode == "full" or (request.mode == "incremental" and relists)

    def validate(self, stream, record):
        plan = self._plans[stream.name]
        if plan.valid is None:
            return
        try:
            plan.valid(record)
            return
        except fastjsonschema.JsonSchemaException:
            pass
        problems = sorted(plan.checker.iter_errors(record), key=lambda e: list(e.absolute_path))
        if problems:
            raise BadRecord("invalid record: " + "; ".join(_problem(e) for e in problems[:5]))

    def webhook_events(self, payload):
        hooks = self.spec.get("webhooks")
        if not hooks or not isinstance(payload, dict):
            return []
        same = hooks.get("same_account")
        if same:
            theirs, ours = selector(same["field"])(payload), self.credentials.get(same["credential"])
            if theirs and ours and str(theirs) != str(ours):
                return []  # another account's event: not ours to sync
        rule = hooks["events"].get(selector(hooks["event"])(payload))
        if rule is None:
            return []
        record_id = selector(rule.get("record_id") or hooks.get("record_id") or "id")(payload)
        if record_id in (None, "") or isinstance(record_id, (dict, list)):
            return []
        return [(rule["stream"], str(record_id), bool(rule.get("deleted")))]


class _StreamPlan:
    """One stream of the file, compiled: requests, paginator, selectors, transforms."""

    def __init__(self, name, raw, connector):
        self.name, self.raw, self.c = name, raw, connector
        self.request = raw["request"]
        self.records_at = Selector(raw["records"])
        self.parent = raw.get("parent")
        paging = dict(raw.get("pagination") or {"type": "none"})
        self.restarts_allowed = paging.pop("restart_on_refused_token", 0)
        self.concurrency = self._int(paging.pop("concurrency", 1), "pagination.concurrency")
        self.in_body = paging.pop("in", "query") == "body"
        self.paginator = self._paginator(paging)
        self.checker = self.valid = None
        if raw.get("validate"):
            # Every record passes through compiled code (a tenth of an interpreted check's
            # time, bench/declared.py); an invalid one's message comes from jsonschema.
            self.valid = fastjsonschema.compile(raw["validate"])
            self.checker = jsonschema.Draft7Validator(raw["validate"])
        self.transform = raw.get("transform") or {}
        self.computed = {field: Selector(expr) for field, expr in (self.transform.get("compute") or {}).items()}
        self.lookups = {field: (spec["setting"], Selector(spec["key"]))
                        for field, spec in (self.transform.get("lookup") or {}).items()}

    def _int(self, value, where):
        value = self.c._render(value, f"streams.{self.name}.{where}") if isinstance(value, str) else value
        try:
            return max(1, int(value))
        except (TypeError, ValueError):
            raise ConfigError(f"streams.{self.name}.{where} must be a whole number, got {value!r}") from None

    def _paginator(self, paging):
        kind = paging.pop("type")
        if "page_size" in paging:
            paging["page_size"] = self._int(paging["page_size"], "pagination.page_size")
        for field, key in (("token", "token_key"), ("cursor", "cursor_key"), ("has_more", "has_more_key")):
            if field in paging:
                paging[key] = Selector(paging.pop(field))
        paging["records_key"] = self.records_at
        paging["total_key"] = selector(self.raw.get("total"))
        return pagination.from_settings({"type": kind, **paging})

    # -- listings -----------------------------------------------------------------------------

    def _params(self, request, extra=None, parent=None):
        where = f"streams.{self.name}.request.params"
        params = render(self.request.get("params") or {}, self.c._context | {"parent": parent}, where)
        if request.mode == "incremental" and request.cursor is not None:
            incremental = self.raw.get("incremental") or {}
            if incremental.get("type") == "cursor":
                # Inclusive lower bound: boundary records come again and dedupe by content hash.
                params[incremental["param"]] = request.cursor
        elif request.mode == "range":
            params.update(self._range_params(request))
        return {**params, **(extra or {})}

    def _range_params(self, request):
        spec = self.raw.get("range") or {}
        since, until = request.params.get("since"), request.params.get("until")
        if not (since or until):
            raise ConfigError("a range run needs since and/or until (dates or ISO date-times)")
        params = dict(spec.get("params") or {})
        for bound, value in (("since", since), ("until", until)):
            param = spec.get(f"{bound}_param")
            if value in (None, "") or not param:
                continue
            day = _date(value, bound)
            if bound == "until" and spec.get("until_inclusive"):
                day = day - timedelta(days=1)
            params[param] = spec.get(f"{bound}_format", "{date}").replace("{date}", day.isoformat())
        return params

    def _window(self, request):
        """(since, until) aware datetimes when this stream filters a range itself, else None."""
        field = (self.raw.get("range") or {}).get("filter_field")
        if request.mode != "range" or not field:
            return None
        since, until = request.params.get("since"), request.params.get("until")
        if not (since or until):
            raise ConfigError("a range run needs since and/or until (dates or ISO date-times)")
        return field, tuple(None if v in (None, "") else _moment(v, name) for name, v in (("since", since), ("until", until)))

    def _path(self, template, **values):
        quoted = {"settings": _quoted(self.c.settings), **{k: _quoted(v) for k, v in values.items()}}
        return str(render(template, self.c._context | quoted, f"streams.{self.name}.request.path"))

    def _send(self, request, state, parent=None, ignore=()):
        """One page of this stream's own request: (records, next_state, total), the raw
        records; None for the records when the answer's status is one to ignore."""
        paging = self.paginator.params(state)
        body = render(self.request.get("body") or {}, self.c._context | {"parent": parent},
                      f"streams.{self.name}.request.body") or None
        if self.in_body:
            body, paging = {**(body or {}), **paging}, {}
        path = self._path(self.request["path"], parent=parent)
        if isinstance(self.paginator, pagination.LinkHeader):
            path = self.paginator.url(state, path)
        params = self._params(request, paging, parent) if not (state and isinstance(self.paginator, pagination.LinkHeader)) else {}
        resp, parsed = self.c.fetch(self.request, self.request.get("rate_limit"), path, params, body, ignore)
        if resp is None:
            return None, None, None
        if isinstance(self.paginator, pagination.LinkHeader):
            return self.paginator.parse_response(resp, parsed, state)
        return self.paginator.parse(parsed, state)

    def listing_page(self, request, state):
        """One page of a top-level listing, filtered to the run's window: (records, state, total).
        A refused page token (expired while the run waited) restarts the listing, up to
        `restart_on_refused_token` times; records come again and are upserted unchanged."""
        restarts = (state or {}).get("restarts", 0)
        inner = {k: v for k, v in state.items() if k != "restarts"} if state else None
        try:
            records, following, total = self._listing(request, inner)
        except HttpError:
            if not inner or restarts >= self.restarts_allowed:
                raise
            restarts += 1
            records, following, total = self._listing(request, None)
        window = self._window(request)
        if window is not None:
            field, bounds = window
            records, total = [r for r in records if _in_window(r, field, bounds)], None
        if following is not None and self.restarts_allowed:
            following = {**following, "restarts": restarts}
        return records, following, total

    def _listing(self, request, state):
        concurrent = isinstance(self.paginator, pagination.PageNumber) and self.concurrency > 1
        if not concurrent:
            return self._send(request, state)
        if state is None:  # the first page tells the total; later pages come a batch at a time
            records, following, total = self._send(request, None)
            return records, following and {**following, "total": total}, total
        return self._page_batch(request, state)

    def _page_batch(self, request, state):
        p, total = self.paginator, state.get("total")
        first = state["page"]
        pages = math.ceil(total / p.page_size) + p.first_page - 1 if total is not None else None
        last = min(first + self.concurrency - 1, pages) if pages and first <= pages else first
        numbers = list(range(first, last + 1))
        with ThreadPoolExecutor(max_workers=len(numbers), thread_name_prefix=f"{self.c.name}-page") as pool:
            results = list(pool.map(lambda n: self._send(request, {"page": n}), numbers))
        records = [r for found, _, _ in results for r in found]
        done = p.finished(last, len(results[-1][0]), total)
        return records, None if done else {"page": last + 1, "total": total}, None

    # -- child streams --------------------------------------------------------------------------

    def children_page(self, request, state):
        """The children of a batch of parent records. State: the parents still to do from the
        current page of the parent listing, and the state of the parent listing's next page."""
        parent_plan = self.c._plans[self.parent["stream"]]
        if not state or not state.get("pending"):
            listing_state = state["next"] if state else None
            parents, following, _ = parent_plan.listing_page(request, listing_state)
            keep = self.parent.get("fields")
            pending = [{k: p.get(k) for k in keep} if keep else p for p in parents if self._wanted(p)]
        else:
            pending, following = list(state["pending"]), state.get("next")
        concurrency = self._int(self.parent.get("concurrency", 1), "parent.concurrency")
        batch, rest = pending[:concurrency], pending[concurrency:]
        records = []
        if batch:
            with ThreadPoolExecutor(max_workers=len(batch), thread_name_prefix=f"{self.c.name}-{self.name}") as pool:
                for found in pool.map(self._children_of, batch):
                    records.extend(found)
        more = bool(rest or following)
        return Page(records, {"pending": rest, "next": following} if more else None)

    def _wanted(self, parent):
        if not isinstance(parent, dict):
            return False
        where = self.parent.get("where")
        if where and not selector(where)(parent):
            return False
        field = self.parent.get("started_by_now")
        if field:
            start = _parse_time(parent.get(field))
            return start is not None and start <= datetime.now(timezone.utc)
        return True

    def _children_of(self, parent):
        found, state = [], None
        full = ReadRequest("full")
        while True:
            records, state, _ = self._send(full, state, parent=parent, ignore=tuple(self.request.get("ignore_status") or ()))
            if records is None:
                return []
            found.extend(records)
            if state is None:
                return self.transformed(found, parent)

    # -- one record, transforms ----------------------------------------------------------------

    def one_record(self, record_id):
        spec = self.raw.get("record")
        if spec is None:
            raise ConfigError(f"stream {self.name!r} cannot fetch one record (its file has no 'record')")
        if record_id in (None, ""):
            raise ConfigError("record mode needs a record_id")
        resp, body = self.c.fetch({}, spec.get("rate_limit"), self._path(spec["path"], record_id=record_id), {},
                                  ignore=tuple(spec.get("missing") or ()))
        if resp is None:  # gone at the provider: the engine soft-deletes our copy
            return Page([], None, total=0)
        found = selector(spec.get("records") or "@")(body)
        return Page(self.transformed([found] if found is not None else []), None, total=1)

    def transformed(self, records, parent=None):
        t = self.transform
        if not t:
            return records
        renames, drops, settings = t.get("rename"), t.get("drop") or (), self.c.settings
        # Once per page, not per record: the tables looked up (a json setting each).
        lookups = [(field, settings.get(setting), key) for field, (setting, key) in self.lookups.items()]
        lookups = [(f, table if isinstance(table, dict) else {}, key) for f, table, key in lookups]
        needs_scope = bool(self.computed) or any(not key.record_field for _, _, key in lookups)
        out = []
        for record in records:
            if not isinstance(record, dict):
                out.append(record)  # the engine refuses it, visibly
                continue
            record = {renames.get(k, k): v for k, v in record.items()} if renames else dict(record)
            scope = {"record": record, "parent": parent, "settings": settings} if needs_scope else None
            for field, expr in self.computed.items():
                record[field] = expr(scope)
            for field, table, key in lookups:
                value = record.get(key.record_field) if key.record_field else key(scope)
                record[field] = table.get(str(value)) if value is not None else None
            for field in drops:
                record.pop(field, None)
            out.append(record)
        return out


def _problem(error):
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def _quoted(value):
    if isinstance(value, dict):
        return {k: _quoted(v) for k, v in value.items()}
    if value is None or isinstance(value, (list, bool)):
        return value
    return quote(str(value), safe="@")


def _moment(value, name):
    text = str(value)
    moment = _parse_time(text if len(text) > 10 else f"{text}T00:00:00Z")
    if moment is None:
        raise ConfigError(f"{name}={value!r} is not a date (2026-01-31) or an ISO date-time")
    return moment


def _date(value, name):
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a date like 2026-01-31") from None


def _in_window(record, field, bounds):
    start = _parse_time(record.get(field)) if isinstance(record, dict) else None
    if start is None:
        return True  # let validation reject it, visibly, rather than drop it silently
    since, until = bounds
    return (since is None or start >= since) and (until is None or start < until)
