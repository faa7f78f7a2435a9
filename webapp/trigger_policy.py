"""A connection's trigger policy: which triggers may start its runs (docs/CONNECTORS.md,
"Trigger policy").

The policy is a list in the connection's settings, under the reserved key
"allowed_triggers", naming some of: manual, schedule, webhook, event, api. The CLI counts
as manual (a person at the terminal). Without the key, every trigger may start runs,
except on a connection whose schedule is `manual`: a manual-only connection takes manual
(admin, CLI) and API triggers only, no schedule, event or webhook.

runs.check_trigger asks `refusal()` for every run whatever started it; the webhook
dispatcher, the schedule planner and the pages read `allowed_triggers()`.

The overlap policy (settings "overlap_policy", like Temporal's schedule overlap policies)
says what a scheduled slot does when it meets an active sync with other parameters:
`skip` (the default: the slot is logged on the active run's history) or `buffer_one` (one
waiting follow-up, which starts when the active sync ends). Events, manual, API and CLI
triggers always follow up: a person or a program asked for that sync.

Pure: no database, no Flask (models.py imports it).
"""

SETTING = "allowed_triggers"
POLICY_TRIGGERS = ("manual", "schedule", "webhook", "event", "api")
# A manual-only connection without a policy: people and programs asking on purpose.
MANUAL_ONLY_DEFAULT = ("manual", "api")
LABELS = {"manual": "manual (admin and CLI)", "schedule": "schedule", "webhook": "webhook",
          "event": "event", "api": "API"}


OVERLAP_SETTING = "overlap_policy"
OVERLAP_POLICIES = ("skip", "buffer_one")
OVERLAP_LABELS = {"skip": "skip the slot (logged on the active run)",
                  "buffer_one": "buffer one: run it after the active sync"}


def overlap_policy(settings):
    """The connection's overlap policy; anything unreadable counts as the default, skip."""
    value = (settings or {}).get(OVERLAP_SETTING) if isinstance(settings, dict) else None
    return value if value in OVERLAP_POLICIES else "skip"


def follows_up(settings, trigger):
    """Does a `trigger` that meets an active sync with other parameters get a waiting
    follow-up (True), or is it skipped?"""
    return trigger != "schedule" or overlap_policy(settings) == "buffer_one"


def validate_overlap(value):
    if value not in OVERLAP_POLICIES:
        raise ValueError(f"{OVERLAP_SETTING} must be one of {', '.join(OVERLAP_POLICIES)}")
    return value


def policy_name(trigger):
    """The policy's name for a run trigger: the CLI is a person asking, like the admin."""
    return "manual" if trigger == "cli" else trigger


def _readable(policy):
    return isinstance(policy, list) and all(isinstance(name, str) and name in POLICY_TRIGGERS for name in policy)


def allowed_triggers(settings, manual_only):
    """The triggers (of POLICY_TRIGGERS, in its order) that may start this connection's runs.
    A manual-only connection never takes `schedule`, whatever its policy says: it has no
    slots. An unreadable policy counts as the manual-only default, so that a typo never
    lets a connection start by itself."""
    policy = (settings or {}).get(SETTING) if isinstance(settings, dict) else None
    if policy is None:
        return MANUAL_ONLY_DEFAULT if manual_only else POLICY_TRIGGERS
    if not _readable(policy):
        return MANUAL_ONLY_DEFAULT
    return tuple(name for name in POLICY_TRIGGERS if name in policy and not (manual_only and name == "schedule"))


def is_explicit(settings):
    return isinstance(settings, dict) and settings.get(SETTING) is not None


def refusal(connection, trigger):
    """None when `trigger` may start runs of this connection (anything with .name,
    .settings and .manual_only), else the reason, a sentence."""
    name = policy_name(trigger)
    if name in allowed_triggers(connection.settings, connection.manual_only):
        return None
    settings = connection.settings
    if is_explicit(settings) and not _readable(settings[SETTING]):
        return (f"connection {connection.name!r} has an unreadable trigger policy ({SETTING} must be a list "
                f"of {', '.join(POLICY_TRIGGERS)}): {name} triggers are refused")
    if connection.manual_only and (name == "schedule" or not is_explicit(settings)):
        return f"connection {connection.name!r} is manual-only: {name} triggers are refused"
    return f"{LABELS[name]} triggers are off for connection {connection.name!r}"


def describe(settings, manual_only):
    """The policy in words, for pages and the CLI."""
    allowed = allowed_triggers(settings, manual_only)
    names = ", ".join(LABELS[name] for name in allowed) or "none (no trigger may start a run)"
    if is_explicit(settings):
        return names if _readable(settings[SETTING]) else f"{names} (the stored policy is unreadable)"
    return f"{names} (the default for a {'manual-only' if manual_only else 'scheduled'} connection)"


def validate(value):
    """The policy to store for `value` (a list of trigger names), or ValueError with what to fix."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{SETTING} must be a list of trigger names ({', '.join(POLICY_TRIGGERS)})")
    unknown = [name for name in value if name not in POLICY_TRIGGERS]
    if unknown:
        hint = " (the CLI counts as manual)" if "cli" in unknown else ""
        raise ValueError(f"{SETTING} names unknown triggers {', '.join(unknown)}; use {', '.join(POLICY_TRIGGERS)}{hint}")
    return [name for name in POLICY_TRIGGERS if name in value]
