"""Create and edit connections. Credentials are write-only: the form shows which keys are
stored, never their values; a blank credential field keeps what is stored. The trigger
policy (webapp/trigger_policy.py) has its own fields: the default, or the ticked triggers."""
import json

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from werkzeug.routing import BuildError

from ..connectors import load_all
from ..connectors.base import REGISTRY
from ..connectors import settings_spec
from ..connectors.errors import ConfigError
from ..connectors.settings_spec import SettingSpec
from ..extensions import db
from ..models import Connection
from ..schedules import firing, parser
from .. import net_guard, runs, trigger_policy
from ..trigger_policy import OVERLAP_SETTING, POLICY_TRIGGERS, SETTING as POLICY_SETTING
from .blueprint import bp


class FormErrors(ValueError):
    """Every problem of a submitted form at once: {field: sentence}. Fields are the form's
    input names ("name", "schedule", "setting.records", ...); "form" is the form as a whole."""

    def __init__(self, errors):
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def _display(value):
    return value if isinstance(value, str) else json.dumps(value)


def connectors():
    load_all()
    return dict(sorted(REGISTRY.items()))


def specs_of(cls):
    """The connector's typed settings; a connector that only names its fields gets text ones."""
    return tuple(cls.settings_spec) or tuple(SettingSpec(name) for name in cls.settings_fields)


def parse_form(cls, form, stored_credentials, stored_policy=None):
    """(name, settings, credentials, schedule, enabled) from the form, or FormErrors naming
    every field that is wrong. A form without the trigger policy's fields (not this page's)
    keeps the stored policy."""
    errors = {}
    name = form.get("name", "").strip()
    if not name or len(name) > 100:
        errors["name"] = "a name of 1 to 100 characters is required"
    extra_text = form.get("extra_settings", "").strip()
    settings = {}
    try:
        settings = json.loads(extra_text) if extra_text else {}
        if not isinstance(settings, dict):
            errors["extra_settings"] = "other settings must be a JSON object, like {\"key\": \"value\"}"
            settings = {}
    except ValueError as exc:
        errors["extra_settings"] = f"other settings are not valid JSON: {exc}"
    specs = specs_of(cls)
    for spec in specs:
        settings.pop(spec.name, None)
    typed, field_errors = settings_spec.parse_fields(
        specs, {spec.name: form.get(f"setting.{spec.name}", "") for spec in specs})
    settings.update(typed)
    errors.update({f"setting.{field}": f"{field} {problem}" for field, problem in field_errors.items()})
    # The policy's own fields decide it, whatever the other settings' JSON says.
    settings.pop(POLICY_SETTING, None)
    if form.get("trigger_policy") == "custom":
        try:
            settings[POLICY_SETTING] = trigger_policy.validate(form.getlist("triggers"))
        except ValueError as exc:
            errors["triggers"] = str(exc)
    elif "trigger_policy" not in form and stored_policy is not None:
        settings[POLICY_SETTING] = stored_policy
    overlap = form.get("overlap_policy", "").strip()
    settings.pop(OVERLAP_SETTING, None)
    if overlap and overlap != "skip":  # skip is the default: stored only when it differs
        settings[OVERLAP_SETTING] = trigger_policy.validate_overlap(overlap)
    credentials = dict(stored_credentials)
    for field in cls.credential_fields:
        if form.get(f"clear.{field}"):
            credentials.pop(field, None)
        value = form.get(f"credential.{field}", "")
        if value.strip():
            credentials[field] = value.strip()
    schedule = None
    try:
        schedule = parser.parse(form.get("schedule", "").strip() or "manual").text
    except ValueError as exc:
        errors["schedule"] = str(exc)
    if errors:
        raise FormErrors(errors)
    return name, settings, credentials, schedule, bool(form.get("enabled"))


def webhook_url(connection):
    """The URL to paste into the provider (by id, so renaming the connection keeps it valid)."""
    try:
        return url_for("webhooks.receive", connection_key=connection.id, _external=True)
    except BuildError:  # the webhooks blueprint is not installed
        return None


def _form_context(cls, connection, form=None, errors=None):
    settings = dict(connection.settings or {}) if connection else {}
    specs = specs_of(cls)
    errors = errors or {}
    rows = [{"spec": spec, "field": f"setting.{spec.name}", "error": errors.get(f"setting.{spec.name}"),
             "value": (form.get(f"setting.{spec.name}", "") if form
                       else _display(settings[spec.name]) if settings.get(spec.name) is not None else "")}
            for spec in specs]
    names = {spec.name for spec in specs}
    extra = {k: v for k, v in settings.items() if k not in names and k not in (POLICY_SETTING, OVERLAP_SETTING)}
    stored = sorted((connection.credentials or {}).keys()) if connection and connection.credentials_encrypted else []
    return {
        "cls": cls,
        "connection": connection,
        "errors": errors,
        "settings_rows": [r for r in rows if not (r["spec"].advanced or r["spec"].fault)],
        "advanced_rows": [r for r in rows if r["spec"].advanced and not r["spec"].fault],
        "fault_rows": [r for r in rows if r["spec"].fault],
        "extra_settings": form.get("extra_settings", "") if form else (json.dumps(extra, indent=2) if extra else ""),
        "stored_credentials": stored,
        "name": form.get("name", "") if form else (connection.name if connection else ""),
        "schedule": form.get("schedule", "") if form else (connection.schedule if connection else "manual"),
        "enabled": bool(form.get("enabled")) if form else (connection.enabled if connection else True),
        "webhook_url": webhook_url(connection) if connection else None,
        **_policy_context(connection, form),
    }


def _policy_context(connection, form):
    """The trigger policy's fields: "default" or "custom", and which triggers are ticked
    (under the default, the ones it allows now, so that choosing "only these" starts there)."""
    if form:
        custom = form.get("trigger_policy") == "custom"
        ticked = [t for t in POLICY_TRIGGERS if t in form.getlist("triggers")]
    else:
        settings, manual_only = (connection.settings or {}, connection.manual_only) if connection else ({}, True)
        custom = trigger_policy.is_explicit(settings)
        stored = settings.get(POLICY_SETTING)
        ticked = ([t for t in POLICY_TRIGGERS if t in stored] if custom and isinstance(stored, list)
                  else list(trigger_policy.allowed_triggers(settings, manual_only)))
    overlap = form.get("overlap_policy") if form else trigger_policy.overlap_policy(connection.settings if connection else {})
    return {"trigger_policy": "custom" if custom else "default", "ticked_triggers": ticked,
            "overlap_policy": overlap, "overlap_policies": list(trigger_policy.OVERLAP_LABELS.items()),
            "policy_triggers": [(t, trigger_policy.LABELS[t]) for t in POLICY_TRIGGERS],
            "policy_words": trigger_policy.describe(connection.settings, connection.manual_only) if connection else None}


@bp.route("/connections/new", methods=["GET", "POST"])
def connection_new():
    available = connectors()
    cls = available.get(request.values.get("connector", ""))
    if cls is None:
        return render_template("admin/connector_pick.html", connectors=available)
    if request.method == "POST":
        connection = Connection(connector=cls.name)
        return _save(cls, connection, created=True)
    return render_template("admin/connection_form.html", **_form_context(cls, None))


@bp.route("/connections/<int:connection_id>/edit", methods=["GET", "POST"])
def connection_edit(connection_id):
    connection = db.get_or_404(Connection, connection_id)
    cls = connectors().get(connection.connector)
    if cls is None:
        flash(f"connector {connection.connector!r} is not installed; this connection cannot be edited here", "error")
        return redirect(url_for("admin.dashboard"))
    if request.method == "POST":
        return _save(cls, connection, created=False)
    return render_template("admin/connection_form.html", **_form_context(cls, connection))


def _save(cls, connection, created):
    try:
        stored = connection.credentials if connection.credentials_encrypted else {}
        name, settings, credentials, schedule, enabled = parse_form(
            cls, request.form, stored, (connection.settings or {}).get(POLICY_SETTING))
        net_guard.check_settings(settings)  # SSRF: refused now, in a sentence, not at the first run
        net_guard.check_settings(credentials)
    except FormErrors as exc:
        return _invalid(cls, connection if not created else None, exc.errors)
    except ConfigError as exc:
        return _invalid(cls, connection if not created else None, {"form": str(exc)})
    try:
        if "mappings" in settings and hasattr(cls, "validate_mappings"):
            cls.validate_mappings(settings["mappings"])  # a malformed rule is refused now, not at each publish
    except (ValueError, ConfigError) as exc:
        return _invalid(cls, connection if not created else None, {"setting.mappings": str(exc)})
    taken = db.session.execute(select(Connection.id).where(func.lower(Connection.name) == name.lower(),
                                                           Connection.id != (connection.id or -1))).first()
    if taken:
        return _invalid(cls, connection if not created else None, {"name": f"another connection is already named {name!r}"})
    allowed = trigger_policy.allowed_triggers(settings, parser.parse(schedule).manual)
    changed = {"credentials_changed": not created and credentials != stored,
               "settings_changed": not created and settings != (connection.settings or {})}
    timing_changed = created or (connection.schedule, connection.enabled, connection.allowed_triggers) != (
        schedule, enabled, allowed)
    connection.name, connection.settings, connection.schedule, connection.enabled = name, settings, schedule, enabled
    connection.credentials = credentials
    if timing_changed:
        firing.reschedule(connection)  # a new schedule takes effect from its next slot
    if created:
        db.session.add(connection)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return _invalid(cls, None if created else connection, {"name": f"another connection is already named {name!r}"})
    current_app.logger.info("connection %s %s", connection.id, "created" if created else "updated")
    flash(f"Connection {name} {'created' if created else 'saved'}.", "info")
    # What the change fixes is resolved; a paused connection resumes with one proving run.
    proving = runs.resume_connection(connection, requested_by=current_user.email, **changed)
    if proving is not None:
        flash(f"{name} resumed: run {proving.id} checks the fix.", "info")
    return redirect(url_for("admin.dashboard"))


def _invalid(cls, connection, errors):
    db.session.rollback()
    count = len(errors)
    flash(f"Nothing was saved: {count} {'field needs' if count == 1 else 'fields need'} fixing (each is marked below).",
          "error")
    return render_template("admin/connection_form.html",
                           **_form_context(cls, connection, request.form, errors)), 400


@bp.route("/connections/<int:connection_id>/test", methods=["POST"])
def connection_test(connection_id):
    """Test connection: the stored settings and credentials against the provider, now."""
    from ..connection_probe import probe

    connection = db.get_or_404(Connection, connection_id)
    result = probe(connection)
    return render_template("admin/connection_test.html", connection=connection, result=result)
