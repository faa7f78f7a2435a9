"""Pagination strategies. Each one turns a checkpoint `state` (a JSON-able dict, None for
the first page) into query params, and a response body into
(records, next_state or None when finished, total or None).

The state is what the engine commits with the page, so it holds only what is needed to ask
for the next page again after a restart.
"""
from .errors import ConfigError


def dig(body, path):
    """The value at a dotted path ("data.items", "total.0.total"); the body itself for None.
    A callable path is a compiled selector (a declared connector's JMESPath expression,
    webapp/connectors/declared/): its None counts as missing.

    Raises KeyError when a step is missing.
    """
    if path is None:
        return body
    if callable(path):
        value = path(body)
        if value is None:
            raise KeyError(getattr(path, "expression", "selector"))
        return value
    value = body
    for step in path.split("."):
        if isinstance(value, list) and step.isdigit():
            value = value[int(step)] if int(step) < len(value) else _missing(step)
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            _missing(step)
    return value


def _missing(step):
    raise KeyError(step)


class _Strategy:
    def __init__(self, records_key=None, total_key=None, extra=None):
        self.records_key = records_key
        self.total_key = total_key
        self.extra = dict(extra or {})  # fixed params on every request, e.g. pageinate=true

    def records(self, body):
        try:
            records = dig(body, self.records_key)
        except KeyError:
            # Never read a missing envelope as "no records": a full sync would then
            # soft-delete everything it had.
            raise ConfigError(f"response has no records at {self.records_key!r}") from None
        if records is None:
            return []
        if not isinstance(records, list):
            raise ConfigError(f"records at {self.records_key!r} are a {type(records).__name__}, not a list")
        return records

    def total(self, body):
        if self.total_key is None:
            return None
        try:
            total = dig(body, self.total_key)
        except KeyError:
            return None
        if isinstance(total, bool):
            return None
        try:
            return int(total)
        except (TypeError, ValueError):
            return None


# When page-number paging is finished, given the page just read.
PAGE_STOPS = (
    "short_page_or_total",  # a short page, or page * size reached the total
    "short_page",  # only a short page (no total, or one not to be trusted)
    # a short page at or past the total: pages short of a total that is still ahead are read
    # on (records deleted meanwhile), and a total that grew is read past (HaloPSA).
    "short_page_beyond_total",
)


class PageNumber(_Strategy):
    """?page=N&page_size=S. Finished when `stop` says (PAGE_STOPS; default: on a short page,
    or once page * size reaches total)."""

    def __init__(self, page_param="page", size_param="page_size", page_size=100, first_page=1,
                 stop="short_page_or_total", **common):
        super().__init__(**common)
        if stop not in PAGE_STOPS:
            raise ConfigError(f"page pagination stop must be one of {', '.join(PAGE_STOPS)}, got {stop!r}")
        self.page_param = page_param
        self.size_param = size_param
        self.page_size = int(page_size)
        self.first_page = int(first_page)
        self.stop = stop

    def params(self, state):
        page = state["page"] if state else self.first_page
        params = {**self.extra, self.page_param: page}
        if self.size_param:
            params[self.size_param] = self.page_size
        return params

    def parse(self, body, state):
        page = state["page"] if state else self.first_page
        records = self.records(body)
        total = self.total(body)
        return records, None if self.finished(page, len(records), total) else {"page": page + 1}, total

    def finished(self, page, count, total):
        """Whether page `page`, holding `count` records of `total` (None: unknown), is the last."""
        short = count < self.page_size
        reached = total is not None and (page - self.first_page + 1) * self.page_size >= total
        if self.stop == "short_page":
            return short
        if self.stop == "short_page_beyond_total":
            return short and (total is None or reached)
        return short or reached


class OffsetLimit(_Strategy):
    """?offset=N&limit=S. Finished on a short page, or once offset reaches total."""

    def __init__(self, offset_param="offset", limit_param="limit", page_size=100, **common):
        super().__init__(**common)
        self.offset_param = offset_param
        self.limit_param = limit_param
        self.page_size = int(page_size)

    def params(self, state):
        offset = state["offset"] if state else 0
        return {**self.extra, self.offset_param: offset, self.limit_param: self.page_size}

    def parse(self, body, state):
        offset = state["offset"] if state else 0
        records = self.records(body)
        total = self.total(body)
        offset += len(records)
        done = len(records) < self.page_size or (total is not None and offset >= total)
        return records, None if done else {"offset": offset}, total


class NextToken(_Strategy):
    """The response names the next page's token (Zoom's next_page_token); empty = finished."""

    def __init__(self, token_param="next_page_token", token_key="next_page_token",  # noqa: S107  names of a page token, not a secret
                 size_param="page_size", page_size=100, **common):
        super().__init__(**common)
        self.token_param = token_param
        self.token_key = token_key
        self.size_param = size_param
        self.page_size = int(page_size)

    def params(self, state):
        params = dict(self.extra)
        if self.size_param:
            params[self.size_param] = self.page_size
        if state:
            params[self.token_param] = state["token"]
        return params

    def parse(self, body, state):
        records = self.records(body)
        try:
            token = dig(body, self.token_key)
        except KeyError:
            token = None
        if token and state and token == state["token"]:
            raise ConfigError(f"pagination token at {self.token_key!r} did not advance")
        return records, {"token": token} if token else None, self.total(body)


class Cursor(_Strategy):
    """Keyset/cursor paging: the next cursor is either at `cursor_key` in the body or the
    `record_field` of the page's last record (Stripe-style starting_after=<last id>).
    Finished on an empty cursor, an empty page, or `has_more_key` false when given."""

    def __init__(self, cursor_param="cursor", cursor_key=None, record_field=None, has_more_key=None,
                 size_param="limit", page_size=100, **common):
        super().__init__(**common)
        if (cursor_key is None) == (record_field is None):
            raise ConfigError("cursor pagination needs exactly one of cursor_key or record_field")
        self.cursor_param = cursor_param
        self.cursor_key = cursor_key
        self.record_field = record_field
        self.has_more_key = has_more_key
        self.size_param = size_param
        self.page_size = int(page_size)

    def params(self, state):
        params = dict(self.extra)
        if self.size_param:
            params[self.size_param] = self.page_size
        if state:
            params[self.cursor_param] = state["cursor"]
        return params

    def parse(self, body, state):
        records = self.records(body)
        if self.cursor_key is not None:
            try:
                cursor = dig(body, self.cursor_key)
            except KeyError:
                cursor = None
        else:
            last = records[-1] if records else None
            cursor = last.get(self.record_field) if isinstance(last, dict) else None
        if self.has_more_key is not None:
            try:
                if not dig(body, self.has_more_key):
                    cursor = None
            except KeyError:
                pass
        if not records or cursor in (None, ""):
            return records, None, self.total(body)
        if state and cursor == state["cursor"]:
            raise ConfigError("pagination cursor did not advance")
        return records, {"cursor": cursor}, self.total(body)


class LinkHeader(_Strategy):
    """RFC 8288 `Link: <url>; rel="next"` (GitHub style): the next page is that whole URL.
    Reads the response, not only the body, so the caller hands it to `parse_response`."""

    def __init__(self, size_param=None, page_size=100, **common):
        super().__init__(**common)
        self.size_param = size_param
        self.page_size = int(page_size)

    def params(self, state):
        if state:  # the next URL carries every parameter already
            return {}
        params = dict(self.extra)
        if self.size_param:
            params[self.size_param] = self.page_size
        return params

    def url(self, state, path):
        return state["url"] if state else path

    def parse(self, body, state):
        raise ConfigError("Link-header pagination reads the response headers; only declared connectors offer it")

    def parse_response(self, resp, body, state):
        records = self.records(body)
        following = (resp.links.get("next") or {}).get("url")
        if following and state and following == state["url"]:
            raise ConfigError("pagination Link rel=next did not advance")
        return records, {"url": following} if following else None, self.total(body)


class Single(_Strategy):
    """Everything in one response (HaloPSA /api/Agent)."""

    def params(self, state):
        return dict(self.extra)

    def parse(self, body, state):
        return self.records(body), None, self.total(body)


STRATEGIES = {"page": PageNumber, "offset": OffsetLimit, "token": NextToken, "cursor": Cursor, "link": LinkHeader,
              "none": Single}


def from_settings(settings):
    """Build a strategy from connection settings: {"type": "page", "page_size": 100, ...}."""
    settings = dict(settings or {"type": "none"})
    kind = settings.pop("type", None)
    if kind not in STRATEGIES:
        raise ConfigError(f"pagination type must be one of {', '.join(STRATEGIES)}, got {kind!r}")
    try:
        return STRATEGIES[kind](**settings)
    except TypeError as exc:
        raise ConfigError(f"bad {kind} pagination settings: {exc}") from None
    except ValueError:
        raise ConfigError(f"bad {kind} pagination settings: page_size and first_page must be integers") from None
