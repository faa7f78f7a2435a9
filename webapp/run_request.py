"""The checks of a run request (mode, dates, mode/parameter combinations, fiscal year,
streams), shared by the CLI, the admin's Sync now form and the API, and made before any run
row exists: a request that cannot work is refused with a sentence, never turned into a
failed run. Triggers that people do not type (schedules, events, webhooks) do not pass here.
"""
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from .connectors import connector_class

# Modes a person or a program may ask for; record runs come from webhooks and events.
REQUEST_MODES = ("full", "incremental", "range")
DATE_PARAMS = ("since", "until")
MIN_YEAR, MAX_YEAR = 1900, 2200


class RunRequestError(ValueError):
    """A run request that cannot be honoured; str() is a sentence for the person who sent it."""


class UnknownStream(RunRequestError):
    """Well-formed, but this connection's connector has no such stream (the API answers 409)."""


@dataclass
class RunRequest:
    mode: str
    params: dict = field(default_factory=dict)
    streams: list = field(default_factory=list)


def request_modes(cls):
    return [m for m in REQUEST_MODES if m in cls.supported_modes]


def stream_names(cls, settings):
    """The streams a connection can sync: the connector's, or (generic REST) its settings'."""
    names = [s.name for s in cls.streams]
    if not names and isinstance((settings or {}).get("streams"), dict):
        names = list(settings["streams"])
    return names


def takes_fiscal_year(cls):
    return any(p.name == "fiscal_year" for p in cls.run_params)


def check(connection, mode="full", params=None, streams=None):
    """The RunRequest to pass to runs.trigger, or RunRequestError saying what to fix.
    Empty parameter values count as absent; dates keep the text given."""
    cls = connector_class(connection.connector)
    modes = request_modes(cls)
    if not modes:
        raise RunRequestError(f"{connection.name} is an outbound destination ({cls.title or cls.name}): "
                              "it has nothing to sync")
    if mode not in modes:
        raise RunRequestError(f"the mode {mode!r} is not one of {', '.join(modes)}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RunRequestError("the run parameters must be an object of name: value")
    params = {k: v for k, v in params.items() if v not in (None, "")}
    for name in DATE_PARAMS:
        if name in params:
            params[name] = _date_text(name, params[name])
    since, until = params.get("since"), params.get("until")
    if (since or until) and mode != "range":
        raise RunRequestError("a start or end date (since, until) applies only to a date-range run (mode range); "
                              f"this is a {mode} run")
    if since and until and _as_datetime(since) >= _as_datetime(until):
        raise RunRequestError(f"the start date {since} must be before the end date {until}")
    if "fiscal_year" in params:
        params["fiscal_year"] = _fiscal_year(connection, params["fiscal_year"])
        if since or until:
            raise RunRequestError("choose either a fiscal year or a date range, not both")
    if mode == "range" and not (since or until or "fiscal_year" in params):
        raise RunRequestError("a date-range run needs a start date, an end date, or both"
                              + (" (or a fiscal year)" if takes_fiscal_year(cls) else ""))
    return RunRequest(mode, params, _streams(cls, connection, streams))


def _date_text(name, value):
    text = str(value).strip()
    try:
        _as_datetime(text)
    except ValueError:
        raise RunRequestError(f"the {_DATE_WORDS[name]} {text[:40]!r} is not a real date; "
                              "write it like 2026-01-31") from None
    return text


_DATE_WORDS = {"since": "start date (since)", "until": "end date (until)"}


def _as_datetime(text):
    """A date (2026-01-31) or an ISO date-time (2026-01-31T08:00:00Z), as a naive datetime."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time())
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def _fiscal_year(connection, value):
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or not MIN_YEAR <= int(text) <= MAX_YEAR:
        raise RunRequestError(f"the fiscal year {text[:20]!r} is not a year like 2026")
    year = int(text)
    listed = (connection.settings or {}).get("fiscal_years")
    if isinstance(listed, list) and listed:
        known = sorted({int(y) for y in listed if str(y).strip().isdigit()})
        if year not in known:
            raise RunRequestError(f"the fiscal year {year} is not one of this connection's: "
                                  + ", ".join(map(str, known)))
    return year


def _streams(cls, connection, streams):
    streams = list(streams or [])
    if not all(isinstance(s, str) for s in streams):
        raise RunRequestError("streams must be a list of stream names")
    known = stream_names(cls, connection.settings)
    unknown = [s for s in streams if s not in known]
    if unknown:
        raise UnknownStream(f"{connection.name} has no stream {', '.join(repr(s) for s in unknown)}; "
                              f"its streams are {', '.join(known) or 'none'}")
    return list(dict.fromkeys(streams))
