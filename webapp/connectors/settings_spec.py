"""Typed declarations of a connector's settings: what the admin form renders, what the
form, the CLI and the API validate with, and what a declarative connector file declares."""
from dataclasses import dataclass
from typing import Any

SETTING_TYPES = ("int", "float", "bool", "string", "url", "choice", "list", "json")


@dataclass(frozen=True)
class SettingSpec:
    name: str
    type: str = "string"  # one of SETTING_TYPES
    default: Any = None
    help: str = ""
    minimum: float | None = None  # int/float bounds, inclusive
    maximum: float | None = None
    choices: tuple = ()  # type "choice": the allowed values
    required: bool = False
    advanced: bool = False  # shown folded away on the form
    fault: bool = False  # a test-only fault-injection knob (sandbox), never beside real settings


# -- reading and checking values ----------------------------------------------------------
# Every function below reports problems as {field: sentence}, all of them at once, so a form
# can put each message beside its field and a CLI can print them all.

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def by_name(specs):
    return {spec.name: spec for spec in specs}


def field_names(specs):
    """The setting names, faults included: what `Connector.settings_fields` lists."""
    return tuple(spec.name for spec in specs)


def parse_text(spec, text):
    """The typed value of a form field or a CLI `key=value`. Raises ValueError with a
    sentence saying what is expected. Blank text is None (the setting is left out)."""
    text = (text or "").strip()
    if text == "":
        return None
    if spec.type in ("int", "float"):
        try:
            value = int(text) if spec.type == "int" else float(text)
        except ValueError:
            raise ValueError(_expected(spec)) from None
        return value
    if spec.type == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("must be yes or no (true or false)")
    if spec.type in ("list", "json"):
        import json

        try:
            value = json.loads(text)
        except ValueError:
            if spec.type == "list":  # a list may also be typed as comma-separated words
                return [item.strip() for item in text.split(",") if item.strip()]
            raise ValueError("must be valid JSON, like {\"key\": \"value\"} or [1, 2]") from None
        return value
    return text


def check_value(spec, value):
    """A sentence saying what is wrong with a typed value, or None when it is acceptable."""
    if value is None:
        return "is required" if spec.required else None
    if spec.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return _expected(spec)
    elif spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _expected(spec)
    elif spec.type == "bool":
        if not isinstance(value, bool):
            return "must be yes or no (true or false)"
    elif spec.type == "url":
        if not (isinstance(value, str) and value.startswith(("http://", "https://")) and value.split("://", 1)[1]):
            return "must be a web address starting with http:// or https://"
    elif spec.type == "choice":
        if value not in spec.choices:
            return "must be one of " + ", ".join(str(c) for c in spec.choices)
    elif spec.type == "list":
        if not isinstance(value, list):
            return "must be a list, like [2025, 2026] or a, b, c"
    elif spec.type == "string":
        if not isinstance(value, str):
            return "must be text"
    if spec.type in ("int", "float"):
        if spec.minimum is not None and value < spec.minimum:
            return _expected(spec)
        if spec.maximum is not None and value > spec.maximum:
            return _expected(spec)
    return None


def typed(specs, settings):
    """`settings` with the numbers and yes/no values that were stored as text ("50", "true":
    written by hand, through the API or by an older version) read as their declared type;
    text that does not read is left for check_settings to name."""
    result = dict(settings or {})
    for spec in specs:
        value = result.get(spec.name)
        if spec.type in ("int", "float", "bool") and isinstance(value, str):
            try:
                result[spec.name] = parse_text(spec, value)
            except ValueError:
                pass
    return result


def check_settings(specs, settings):
    """{field: sentence} for every declared setting whose stored value is unusable
    (settings the connector does not declare are not judged here)."""
    errors = {}
    for spec in specs:
        problem = check_value(spec, settings.get(spec.name))
        if problem:
            errors[spec.name] = problem
    return errors


def parse_fields(specs, texts):
    """(settings, errors) from {name: text} as typed into a form or a CLI: each declared
    setting parsed and checked; blank ones left out. Errors cover every field at once."""
    settings, errors = {}, {}
    for spec in specs:
        if spec.name not in texts:
            continue
        try:
            value = parse_text(spec, texts[spec.name])
        except ValueError as exc:
            errors[spec.name] = str(exc)
            continue
        problem = check_value(spec, value)
        if problem:
            errors[spec.name] = problem
        elif value is not None:
            settings[spec.name] = value
    return settings, errors


def describe_errors(errors):
    """One line naming every field and what is wrong with it, for a CLI or an API answer."""
    return "; ".join(f"{name} {problem}" for name, problem in errors.items())


def _expected(spec):
    kind = "a whole number" if spec.type == "int" else "a number"
    if spec.minimum is not None and spec.maximum is not None:
        return f"must be {kind} from {_num(spec.minimum)} to {_num(spec.maximum)}"
    if spec.minimum is not None:
        return f"must be {kind} of at least {_num(spec.minimum)}"
    if spec.maximum is not None:
        return f"must be {kind} of at most {_num(spec.maximum)}"
    return f"must be {kind}"


def _num(value):
    return int(value) if float(value).is_integer() else value
