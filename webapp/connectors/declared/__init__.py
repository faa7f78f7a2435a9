"""Declared connectors: a provider in one YAML file (docs/CONNECTORS.md, 'Add a provider in
one file').

Files come from this folder (synchub's own) and from SYNCHUB_CONNECTORS_DIR. Each is checked
against connector.schema.json (JSON Schema, with the `jsonschema` library) and then for what
a schema cannot see (a template naming an undeclared setting, a parent stream that does not
exist, a JMESPath expression that does not parse...). A file that passes becomes a subclass
of runtime.DeclaredConnector, registered like a Python connector; a file that fails is
refused with its path, the line and what is wrong, and the others still load.
"""
import glob
import json
import logging
import os
import re
import time
from dataclasses import dataclass

import fastjsonschema
import jmespath
import jsonschema
import yaml

from ..base import REGISTRY, Param, Stream
from .runtime import DeclaredConnector
from .settings import specs_from

log = logging.getLogger(__name__)

PACKAGE_DIR = os.path.dirname(__file__)
SCHEMA_PATH = os.path.join(PACKAGE_DIR, "connector.schema.json")
with open(SCHEMA_PATH) as _f:
    SCHEMA = json.load(_f)
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# Where each signature scheme reads its secret (webapp/webhooks/signatures.py's SCHEMES): a
# file taking webhooks must declare it, or every delivery would be refused as unsigned.
WEBHOOK_SECRETS = {
    "standard": ("credentials", ("webhook_secret",)),
    "zoom": ("credentials", ("webhook_secret_token",)),
    "highlevel": ("settings", ("webhook_public_key",)),
    "halopsa": ("credentials", ("webhook_username", "webhook_password")),
}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.\-]+)\??\}")


@dataclass(frozen=True)
class Problem:
    path: str  # the file
    line: int | None
    where: str  # the field, dotted ("streams.webinars.pagination.type"); "" for the whole file
    message: str

    def __str__(self):
        at = f"{self.path}:{self.line}" if self.line else self.path
        return f"{at}: {self.where}: {self.message}" if self.where else f"{at}: {self.message}"


class FileRefused(Exception):
    def __init__(self, problems):
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


def load_file(path):
    """The connector class a file declares; FileRefused listing every problem found."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise FileRefused([Problem(path, None, "", f"cannot be read ({exc.strerror})")]) from None
    return build(text, path)


def build(text, path="<text>"):
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FileRefused([Problem(path, mark.line + 1 if mark else None, "",
                                   f"is not valid YAML ({getattr(exc, 'problem', None) or exc})")]) from None
    problems = [Problem(path, _line(node, list(e.absolute_path)), ".".join(map(str, e.absolute_path)), e.message)
                for e in _VALIDATOR.iter_errors(spec)]
    if not problems:
        problems = [Problem(path, _line(node, where), ".".join(map(str, where)), message)
                    for where, message in semantic_problems(spec)]
    if problems:
        raise FileRefused(sorted(problems, key=lambda p: (p.line or 0, p.where)))
    return make_class(spec, path)


def make_class(spec, path):
    streams = tuple(Stream(name, primary_key=raw.get("primary_key", "id"), cursor_field=raw.get("cursor_field"))
                    for name, raw in spec["streams"].items())
    raw_streams = spec["streams"].values()
    modes = ["full"]
    if any(s.get("incremental") for s in raw_streams):
        modes.append("incremental")
    if any(s.get("range") for s in raw_streams):
        modes.append("range")
    if any(s.get("record") for s in raw_streams):
        modes.append("record")
    params = ()
    if "range" in modes:
        params = (Param("since", "From", "date", help="range mode: records on or after this date"),
                  Param("until", "Before", "date", help="range mode: records before this date"))
    settings_spec = specs_from(spec.get("settings"))
    attrs = {
        "name": spec["name"], "title": spec.get("title", spec["name"]), "__doc__": spec.get("description"),
        "streams": streams, "settings_spec": settings_spec,
        "settings_fields": tuple(s.name for s in settings_spec),
        "credential_fields": tuple(spec.get("credentials") or ()),
        "supported_modes": tuple(modes), "run_params": params,
        "webhook_scheme": (spec.get("webhooks") or {}).get("scheme"),
        "spec": spec, "source": path,
    }
    return type(f"Declared_{spec['name']}", (DeclaredConnector,), attrs)


def semantic_problems(spec):
    """(path, message) for what the schema cannot see. `spec` already passed the schema."""
    settings, credentials = set(spec.get("settings") or ()), set(spec.get("credentials") or ())
    streams = spec["streams"]
    budgets = set(((spec.get("rate_limits") or {}).get("budgets") or {}))
    for where, text in _strings(spec, []):
        for match in _PLACEHOLDER.finditer(text):
            name = match.group(1) or ""
            head, _, field = name.partition(".")
            if head == "settings" and field.split(".")[0] not in settings:
                yield where, f"names setting {field!r}, which the file does not declare under settings"
            elif head == "credentials" and field.split(".")[0] not in credentials:
                yield where, f"names credential {field!r}, which the file does not declare under credentials"
    for where, text in _expressions(spec):
        try:
            jmespath.compile(text)
        except jmespath.exceptions.JMESPathError as exc:
            yield where, f"is not a JMESPath expression ({str(exc).splitlines()[0]})"
    limits = spec.get("rate_limits") or {}
    if limits.get("budgets_setting") and limits["budgets_setting"] not in settings:
        yield ["rate_limits", "budgets_setting"], f"names setting {limits['budgets_setting']!r}, which is not declared"
    for name, raw in streams.items():
        at = ["streams", name]
        for part, sub in (("request", raw["request"]), ("record", raw.get("record") or {})):
            if sub.get("rate_limit") and sub["rate_limit"] not in budgets:
                yield at + [part, "rate_limit"], f"names budget {sub['rate_limit']!r}, not one of rate_limits.budgets"
        parent = raw.get("parent")
        if parent:
            if parent["stream"] not in streams or parent["stream"] == name:
                yield at + ["parent", "stream"], f"names stream {parent['stream']!r}, not another stream of this file"
            elif streams[parent["stream"]].get("parent"):
                yield at + ["parent", "stream"], "a parent stream must be a listing itself, not a child stream"
        elif "{parent." in json.dumps(raw):
            yield at, "uses {parent.…} but has no parent stream"
        for field, lookup in ((raw.get("transform") or {}).get("lookup") or {}).items():
            if lookup["setting"] not in settings:
                yield at + ["transform", "lookup", field, "setting"], f"names setting {lookup['setting']!r}, which is not declared"
        incremental = raw.get("incremental") or {}
        if incremental.get("type") == "cursor" and not raw.get("cursor_field"):
            yield at + ["incremental"], "a cursor increment needs the stream's cursor_field (where the cursor is read)"
        if raw.get("validate"):
            try:
                jsonschema.Draft7Validator.check_schema(raw["validate"])
                fastjsonschema.compile(raw["validate"])
            except jsonschema.SchemaError as exc:
                yield at + ["validate"], f"is not a JSON Schema, draft 7 ({exc.message})"
            except fastjsonschema.JsonSchemaDefinitionException as exc:
                yield at + ["validate"], f"cannot be compiled ({exc})"
    scheme = (spec.get("webhooks") or {}).get("scheme")
    if scheme:
        section, names = WEBHOOK_SECRETS[scheme]
        declared = settings if section == "settings" else credentials
        for name in names:
            if name not in declared:
                yield ["webhooks", "scheme"], f"the {scheme} scheme reads {section}.{name}, which the file does not declare"
    for event, rule in ((spec.get("webhooks") or {}).get("events") or {}).items():
        if rule["stream"] not in streams:
            yield ["webhooks", "events", event, "stream"], f"names stream {rule['stream']!r}, not a stream of this file"


def _expressions(spec):
    """(path, text) of every JMESPath expression in the file."""
    for name, raw in spec["streams"].items():
        at = ["streams", name]
        for field in ("records", "total"):
            if raw.get(field):
                yield at + [field], raw[field]
        for field in ("token", "cursor", "has_more"):
            if (raw.get("pagination") or {}).get(field):
                yield at + ["pagination", field], raw["pagination"][field]
        if (raw.get("parent") or {}).get("where"):
            yield at + ["parent", "where"], raw["parent"]["where"]
        if (raw.get("record") or {}).get("records"):
            yield at + ["record", "records"], raw["record"]["records"]
        transform = raw.get("transform") or {}
        for field, text in (transform.get("compute") or {}).items():
            yield at + ["transform", "compute", field], text
        for field, lookup in (transform.get("lookup") or {}).items():
            yield at + ["transform", "lookup", field, "key"], lookup["key"]
    hooks = spec.get("webhooks") or {}
    for field in ("event", "record_id"):
        if hooks.get(field):
            yield ["webhooks", field], hooks[field]
    if hooks.get("same_account"):
        yield ["webhooks", "same_account", "field"], hooks["same_account"]["field"]
    for event, rule in (hooks.get("events") or {}).items():
        if rule.get("record_id"):
            yield ["webhooks", "events", event, "record_id"], rule["record_id"]


def _strings(value, where):
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            if where[-1:] in (["validate"], ["default"]):
                continue
            yield from _strings(item, where + [key])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, where + [i])


def _line(node, path):
    """The 1-based line of the YAML node at `path` (or of the nearest node above it)."""
    line = node.start_mark.line + 1 if node is not None else None
    for step in path:
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(step)), None)
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            break
    return line


# -- loading into the registry --------------------------------------------------------------------

_loaded = {}  # folder -> {file path: (mtime, class or FileRefused)}
_announced = set()  # problems already logged by this process
_scanned = {}  # folder -> (monotonic time of the last look, its (classes, problems))
# connector_class() runs for every run and webhook batch: the folder is looked at again
# (files listed, changed ones read) at most this often.
RESCAN_SECONDS = 2.0


def load_dir(folder):
    """(classes, problems) of the *.yaml / *.yml files of `folder`, each file read again only
    when it changed, the folder listed again at most every RESCAN_SECONDS."""
    last = _scanned.get(folder)
    if last is not None and time.monotonic() - last[0] < RESCAN_SECONDS:
        return last[1]
    result = _scan(folder)
    _scanned[folder] = (time.monotonic(), result)
    return result


def _scan(folder):
    seen = _loaded.setdefault(folder, {})
    classes, refused = [], []
    paths = sorted(glob.glob(os.path.join(folder, "*.yaml")) + glob.glob(os.path.join(folder, "*.yml")))
    for path in paths:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        cached = seen.get(path)
        if cached is None or cached[0] != mtime:
            try:
                result = load_file(path)
            except FileRefused as exc:
                result = exc
                _announce(exc.problems)
            seen[path] = cached = (mtime, result)
        (refused if isinstance(cached[1], FileRefused) else classes).append(cached[1])
    return classes, [p for exc in refused for p in exc.problems]


def check_files(configured):
    """Load (and so log the problems of) every file, without registering: the Python
    connectors are registered first, on first use (webapp/connectors/__init__.py)."""
    return [p for folder in folders(configured) for p in load_dir(folder)[1]]


def folders(configured):
    """synchub's own folder, then SYNCHUB_CONNECTORS_DIR when set."""
    return [PACKAGE_DIR] + ([configured] if configured else [])


def configured_dir():
    """SYNCHUB_CONNECTORS_DIR, from the app when there is one (tests set it per app)."""
    from flask import current_app, has_app_context

    from ...config import setting_value

    return current_app.config["CONNECTORS_DIR"] if has_app_context() else setting_value("CONNECTORS_DIR")


def register_all():
    """Register every declared connector that loads. A file naming a connector that already
    exists (a Python one, or an earlier file) is refused; returns every problem."""
    problems = []
    for folder in folders(configured_dir()):
        classes, refused = load_dir(folder)
        problems += refused
        for cls in classes:
            current = REGISTRY.get(cls.name)
            if current is None or getattr(current, "source", None) == cls.source:
                REGISTRY[cls.name] = cls
            else:
                problem = Problem(cls.source, 1, "name", f"connector {cls.name!r} already exists "
                                  f"({getattr(current, 'source', None) or 'a Python connector'})")
                _announce([problem])
                problems.append(problem)
    return problems


def _announce(problems):
    for problem in problems:
        if problem not in _announced:
            _announced.add(problem)
            log.error("declared connector refused: %s", problem)
