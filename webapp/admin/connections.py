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
from ..connectors.errors import ConfigError
from ..extensions import db
from ..models import Connection
from ..schedules import firing, parser
from .. import net_guard, runs, trigger_policy
from ..trigger_policy import OVERLAP_SETTING, POLICY_TRIGGERS, SETTING as POLICY_SETTING
from .blueprint import bp


def _value(text):
    """Settings are JSON: numbers, booleans, lists and objects typed as such, the rest as text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _display(value):
    return value if isinstance(value, str) else json.dumps(value)


def connectors():
    load_all()
    return dict(sorted(REGISTRY.items()))


def parse_form(cls, form, stored_credentials, stored_policy=None):
    """(name, settings, credentials, schedule, enabled) from the form, or ValueError. A form
    without the trigger policy's fields (not this page's) keeps the stored policy."""
    name = form.get("name", "").strip()
    if not name or len(name) > 100:
        raise ValueError("a name of 1 to 100 characters is required")
    extra_text = form.get("extra_settings", "").strip()
    try:
        settings = json.loads(extra_text) if extra_text else {}
    except ValueError as exc:
        raise ValueError(f"other settings are not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise ValueError("other settings must be a JSON object, like {\"key\": \"value\"}")
    for field in cls.settings_fields:
        text = form.get(f"setting.{field}", "").strip()
        settings.pop(field, None)
        if text:
            settings[field] = _value(text)
    # The policy's own fields decide it, whatever the other settings' JSON says.
    settings.pop(POLICY_SETTING, None)
    if form.get("trigger_policy") == "custom":
        settings[POLICY_SETTING] = trigger_policy.validate(form.getlist("triggers"))
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
    schedule = parser.parse(form.get("schedule", "").strip() or "manual").text
    return name, settings, credentials, schedule, bool(form.get("enabled"))


def webhook_url(connection):
    """The URL to paste into the provider (by id, so renaming the connection keeps it valid)."""
    try:
        return url_for("webhooks.receive", connection_key=connection.id, _external=True)
    except BuildError:  # the webhooks blueprint is not installed
        return None


def _form_context(cls, connection, form=None):
    settings = dict(connection.settings or {}) if connection else {}
    fields = {f: (form.get(f"setting.{f}", "") if form else _display(settings[f]) if f in settings else "")
              for f in cls.settings_fields}
    extra = {k: v for k, v in settings.items()
             if k not in cls.settings_fields and k not in (POLICY_SETTING, OVERLAP_SETTING)}
    stored = sorted((connection.credentials or {}).keys()) if connection and connection.credentials_encrypted else []
    return {
        "cls": cls,
        "connection": connection,
        "fields": fields,
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
        if "mappings" in settings and hasattr(cls, "validate_mappings"):
            cls.validate_mappings(settings["mappings"])  # a malformed rule is refused now, not at each publish
        taken = db.session.execute(select(Connection.id).where(func.lower(Connection.name) == name.lower(),
                                                               Connection.id != (connection.id or -1))).first()
        if taken:
            raise ValueError(f"another connection is already named {name!r}")
    except (ValueError, ConfigError) as exc:
        return _invalid(cls, connection if not created else None, str(exc))
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
        return _invalid(cls, None if created else connection, f"another connection is already named {name!r}")
    current_app.logger.info("connection %s %s", connection.id, "created" if created else "updated")
    flash(f"Connection {name} {'created' if created else 'saved'}.", "info")
    # What the change fixes is resolved; a paused connection resumes with one proving run.
    proving = runs.resume_connection(connection, requested_by=current_user.email, **changed)
    if proving is not None:
        flash(f"{name} resumed: run {proving.id} checks the fix.", "info")
    return redirect(url_for("admin.dashboard"))


def _invalid(cls, connection, message):
    db.session.rollback()
    flash(message, "error")
    return render_template("admin/connection_form.html", **_form_context(cls, connection, request.form)), 400
