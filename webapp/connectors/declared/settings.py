"""A declared connector's settings: the file's typed declarations as SettingSpec (the
admin form, the CLI and the API read them), and a connection's values checked and coerced
against them when the connector is built."""
import json

from ..errors import ConfigError
from ..settings_spec import SettingSpec


def specs_from(declared):
    """The file's `settings` mapping as a tuple of SettingSpec, in file order."""
    return tuple(
        SettingSpec(name, type=raw.get("type", "string"), default=raw.get("default"), help=raw.get("help", ""),
                    minimum=raw.get("minimum"), maximum=raw.get("maximum"), choices=tuple(raw.get("choices") or ()),
                    required=bool(raw.get("required")), advanced=bool(raw.get("advanced")))
        for name, raw in (declared or {}).items()
    )


def coerce_settings(specs, values):
    """The connection's settings with defaults filled in and each declared value of its type.
    Settings the file does not declare pass through (the trigger policy, for one)."""
    out = dict(values or {})
    for spec in specs:
        value = out.get(spec.name)
        if value is None or value == "":
            if spec.required and spec.default is None:
                raise ConfigError(f"setting {spec.name!r} is required{_help(spec)}")
            out[spec.name] = spec.default
            continue
        out[spec.name] = coerce(spec, value)
    return out


def coerce(spec, value):
    """One value of `spec`'s type, or ConfigError saying what is expected."""
    kind = spec.type
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind == "bool":
            if isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = value.strip().lower() in ("1", "true", "yes", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif kind in ("string", "url", "choice"):
            if isinstance(value, (dict, list)):
                raise ValueError
            value = str(value)
        elif kind == "list":
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            elif not isinstance(value, list):
                raise ValueError
        elif kind == "json" and isinstance(value, str):
            value = json.loads(value)
    except ValueError:
        raise ConfigError(f"setting {spec.name!r} must be {_kind(spec)}, got {str(value)[:40]!r}") from None
    if kind == "url" and not value.startswith(("http://", "https://")):
        raise ConfigError(f"setting {spec.name!r} must be an http:// or https:// URL")
    if kind == "choice" and value not in spec.choices:
        raise ConfigError(f"setting {spec.name!r} must be one of {', '.join(map(str, spec.choices))}")
    if kind in ("int", "float"):
        if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
            raise ConfigError(f"setting {spec.name!r} must be between {_num(spec.minimum)} and {_num(spec.maximum)}, "
                              f"got {_num(value)}")
    return value


def _kind(spec):
    return {"int": "a whole number", "float": "a number", "bool": "true or false", "list": "a list",
            "json": "JSON"}.get(spec.type, "text")


def _num(value):
    if value is None:
        return "no bound"
    return str(int(value)) if float(value).is_integer() else str(value)


def _help(spec):
    return f" ({spec.help})" if spec.help else ""
