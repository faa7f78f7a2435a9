"""Mapping rules: configuration that turns an app event into provider actions.

A connection's `settings["mappings"]` maps an app event type to a list of rules; each rule
is a JSON object whose strings may name fields of the event's payload in braces:

    "nomination_approved": [
        {"action": "upsert_contact", "email": "{nominee.email}",
         "properties": {"userGroup": "Nominees", "liveUrl": "{live_url}"}}
    ]

- `"{a.b}"` alone is replaced by the value itself (any JSON type); inside other text by its
  string form. `{{` and `}}` are literal braces.
- `"{a.b?}"` is optional: a missing or null field drops that property (or renders as
  empty text inside a longer string). A missing required field is an error naming the
  event type, the rule and the field, so a bad event is refused when it is published.
- Besides the payload's own fields, `{event_type}` and `{event_key}` name the event itself
  (unless the payload has fields of those names).
"""
import re

from .errors import ConfigError

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.\-]+)(\?)?\}")
_OMIT = object()


class MappingError(ConfigError):
    """The event cannot be mapped: a rule names a field the payload lacks, or a rule is malformed."""


def rules_for(mappings, event_type):
    """The list of rules for this event type ([] when the type is not mapped)."""
    if mappings in (None, {}):
        return []
    if not isinstance(mappings, dict):
        raise MappingError("settings.mappings must be an object of event type -> list of rules")
    rules = mappings.get(event_type) or []
    if isinstance(rules, dict):
        rules = [rules]
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise MappingError(f"mappings[{event_type!r}] must be a list of rule objects")
    return rules


def render(rule, context, where):
    """The rule with every placeholder replaced from `context` (a dict)."""
    value = _render(rule, context, where)
    return {} if value is _OMIT else value


def context_for(event_type, key, payload):
    context = {"event_type": event_type, "event_key": key}
    context.update(payload or {})
    return context


def _render(value, context, where):
    if isinstance(value, str):
        return _render_string(value, context, where)
    if isinstance(value, dict):
        out = {}
        for name, item in value.items():
            rendered = _render(item, context, f"{where}.{name}")
            if rendered is not _OMIT:
                out[name] = rendered
        return out
    if isinstance(value, list):
        return [item for item in (_render(v, context, where) for v in value) if item is not _OMIT]
    return value


def _render_string(text, context, where):
    whole = _PLACEHOLDER.fullmatch(text)
    if whole and whole.group(1):
        value = _lookup(context, whole.group(1), bool(whole.group(2)), where)
        return _OMIT if value is None and whole.group(2) else value

    def substitute(match):
        if match.group(0) == "{{":
            return "{"
        if match.group(0) == "}}":
            return "}"
        value = _lookup(context, match.group(1), bool(match.group(2)), where)
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(substitute, text)


def _lookup(context, path, optional, where):
    value = context
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            if optional:
                return None
            raise MappingError(f"{where}: the event has no field {path!r}")
    if value is None and not optional:
        raise MappingError(f"{where}: field {path!r} is null")
    return value
