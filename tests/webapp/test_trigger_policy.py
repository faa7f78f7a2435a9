"""The trigger policy: which triggers may start a connection's runs, decided in one place."""
from types import SimpleNamespace

import pytest

from webapp import trigger_policy
from webapp.models import Connection
from webapp.trigger_policy import POLICY_TRIGGERS, allowed_triggers, describe, refusal, validate

EVERY = ("manual", "schedule", "webhook", "event", "api")


def _connection(schedule="manual", policy=None, name="c"):
    settings = {} if policy is None else {"allowed_triggers": policy}
    return SimpleNamespace(name=name, settings=settings, manual_only=Connection(schedule=schedule).manual_only)


def test_without_a_policy_a_scheduled_connection_takes_every_trigger():
    assert POLICY_TRIGGERS == EVERY
    assert allowed_triggers({}, manual_only=False) == EVERY
    assert allowed_triggers(None, manual_only=False) == EVERY
    for trigger in EVERY + ("cli",):
        assert refusal(_connection("hourly:0"), trigger) is None


def test_without_a_policy_a_manual_only_connection_takes_manual_cli_and_api_only():
    connection = _connection("manual", name="zoom")
    assert allowed_triggers(connection.settings, connection.manual_only) == ("manual", "api")
    for trigger in ("manual", "cli", "api"):
        assert refusal(connection, trigger) is None
    for trigger in ("schedule", "event", "webhook"):
        assert refusal(connection, trigger) == f"connection 'zoom' is manual-only: {trigger} triggers are refused"


@pytest.mark.parametrize("schedule", ["Manual", " manual ", "every:banana"])
def test_an_oddly_written_or_unreadable_schedule_counts_as_manual_only(schedule):
    assert "webhook" not in allowed_triggers({}, _connection(schedule).manual_only)


def test_an_explicit_policy_is_obeyed_in_its_own_order():
    connection = _connection("every:5", ["webhook", "manual"], name="shop")
    assert allowed_triggers(connection.settings, False) == ("manual", "webhook")
    assert refusal(connection, "webhook") is None and refusal(connection, "cli") is None
    assert refusal(connection, "event") == "event triggers are off for connection 'shop'"
    assert refusal(connection, "api") == "API triggers are off for connection 'shop'"
    assert refusal(connection, "schedule") == "schedule triggers are off for connection 'shop'"


def test_the_cli_counts_as_manual():
    connection = _connection("every:5", ["api", "schedule"], name="halo")
    assert refusal(connection, "cli") == "manual (admin and CLI) triggers are off for connection 'halo'"


def test_an_explicit_policy_opens_a_manual_connection_to_webhooks_but_never_to_slots():
    connection = _connection("manual", ["manual", "webhook", "schedule"], name="orders")
    assert allowed_triggers(connection.settings, True) == ("manual", "webhook")
    assert refusal(connection, "webhook") is None
    assert "manual-only" in refusal(connection, "schedule")
    assert refusal(connection, "event") == "event triggers are off for connection 'orders'"


def test_an_empty_policy_allows_nothing():
    connection = _connection("every:5", [])
    assert allowed_triggers(connection.settings, False) == ()
    assert all(refusal(connection, t) for t in EVERY + ("cli",))
    assert describe(connection.settings, False).startswith("none")


@pytest.mark.parametrize("policy", ["webhook", {"webhook": True}, ["webhook", "cron"], [1]])
def test_an_unreadable_policy_counts_as_the_manual_only_default(policy):
    connection = _connection("every:5", policy)
    assert allowed_triggers(connection.settings, False) == ("manual", "api")
    assert "unreadable trigger policy" in refusal(connection, "webhook")
    assert "unreadable" in describe(connection.settings, False)


def test_described_in_words():
    assert describe({}, False) == ("manual (admin and CLI), schedule, webhook, event, API "
                                   "(the default for a scheduled connection)")
    assert describe({}, True) == "manual (admin and CLI), API (the default for a manual-only connection)"
    assert describe({"allowed_triggers": ["webhook", "manual"]}, True) == "manual (admin and CLI), webhook"


def test_validate_keeps_known_names_in_order_and_explains_the_rest():
    assert validate(["api", "manual", "api"]) == ["manual", "api"]
    assert validate([]) == []
    with pytest.raises(ValueError, match="must be a list"):
        validate("manual")
    with pytest.raises(ValueError, match="unknown triggers cli.*the CLI counts as manual"):
        validate(["cli"])


def test_the_model_asks_the_policy():
    connection = Connection(name="c", connector="sandbox", schedule="hourly:0",
                            settings={trigger_policy.SETTING: ["event"]})
    assert connection.allowed_triggers == ("event",)
    assert Connection(name="z", connector="zoom", schedule="manual", settings={}).allowed_triggers == ("manual", "api")
