"""The Loops destination (mapping rules -> actions -> requests) and the Loops simulator,
over real HTTP on 127.0.0.1, with the rate limit shared through a real Redis."""
import threading
import time
import uuid

import pytest
import redis as redis_lib
import requests

from tests.webapp.outbox.support import S1_MAPPINGS
from tests.simulators.loops import LoopsAPI
from webapp.connectors import connector_class
from webapp.connectors.base import Services
from webapp.connectors.errors import AuthError, ConfigError, TransientError
from webapp.connectors.errors import HttpError
from webapp.connectors.loops import LoopsConnector
from webapp.connectors.mapping import MappingError

KEY = "loops-test-key"


def _loops(server, redis_url=None, **settings):
    client = redis_lib.Redis.from_url(redis_url) if redis_url else None
    services = Services(config={"OUTBOX_HTTP_TIMEOUT_SECONDS": 5}, redis=client, connection_id=1)
    return LoopsConnector({"base_url": server.url + "/api", **settings}, {"api_key": KEY}, services)


def _upsert(email, **properties):
    return {"action": "upsert_contact", "body": {"email": email, **properties}}


# -- planning: app event -> actions ------------------------------------------------------


def test_loops_is_a_registered_outbound_connector():
    assert connector_class("loops") is LoopsConnector
    with pytest.raises(ConfigError, match="outbound destination"):
        LoopsConnector({}, {}, None).read_page(None, None, None)


def test_s1_mapping_plans_the_documented_contact_changes():
    settings = {"mappings": S1_MAPPINGS}
    nomination = {"nominator": {"email": "Alice@Example.com", "first_name": "Alice"},
                  "nominee": {"email": "bob@example.com", "name": "Bob Stone"}, "live_url": "https://a.example/bob"}
    assert LoopsConnector.plan(settings, "nomination_submitted", "nom-1", nomination) == [
        {"key": "alice@example.com", "payload": {"action": "upsert_contact", "body": {
            "email": "Alice@Example.com", "firstName": "Alice", "userGroup": "Nominator"}}}]
    assert LoopsConnector.plan(settings, "nomination_approved", "nom-1", nomination) == [
        {"key": "bob@example.com", "payload": {"action": "upsert_contact", "body": {
            "email": "bob@example.com", "userGroup": "Nominees", "liveUrl": "https://a.example/bob"}}},
        {"key": "alice@example.com", "payload": {"action": "upsert_contact", "body": {
            "email": "Alice@Example.com", "userGroup": "Nominator Live", "nomineeName": "Bob Stone",
            "liveUrl": "https://a.example/bob"}}}]
    assert LoopsConnector.plan(settings, "vote_cast", "v-1", {"voter": {"email": "c@example.com"}}) == [
        {"key": "c@example.com", "payload": {"action": "upsert_contact", "body": {
            "email": "c@example.com", "userGroup": "Voters"}}}]
    assert LoopsConnector.plan(settings, "something_else", "x", {}) == []


def test_templates_keep_value_types_mix_text_and_escape_braces():
    mappings = {"paid": [{"action": "send_event", "email": "{buyer.email}", "event": "paid",
                          "event_properties": {"amount": "{amount}", "label": "{{order}} #{order.id} by {event_key}",
                                               "note": "{note?}"},
                          "properties": {"vip": "{vip}", "tier": "{buyer.tier?}"}}]}
    [action] = LoopsConnector.plan({"mappings": mappings}, "paid", "ord-9",
                                   {"buyer": {"email": "b@example.com"}, "amount": 12.5, "vip": True,
                                    "order": {"id": 7}})
    assert action["payload"]["body"] == {"email": "b@example.com", "eventName": "paid", "vip": True,
                                         "eventProperties": {"amount": 12.5, "label": "{order} #7 by ord-9"}}


@pytest.mark.parametrize("mappings, payload, message", [
    ({"e": [{"action": "delete_everything"}]}, {}, "action must be one of upsert_contact, send_event"),
    ({"e": [{"action": "upsert_contact", "email": "{email}", "propertes": {}}]}, {"email": "a@b.c"},
     "unknown field\\(s\\) propertes"),
    ({"e": [{"action": "upsert_contact", "email": "{who.email}"}]}, {"who": {}}, "no field 'who.email'"),
    ({"e": [{"action": "upsert_contact", "email": "{email}"}]}, {"email": None}, "field 'email' is null"),
    ({"e": [{"action": "send_event", "email": "{email}"}]}, {"email": "a@b.c"}, "needs an event name"),
    ({"e": "not a list"}, {}, "must be a list of rule objects"),
])
def test_bad_rules_or_payloads_are_refused_naming_the_rule(mappings, payload, message):
    with pytest.raises(MappingError, match=message):
        LoopsConnector.plan({"mappings": mappings}, "e", "k", payload)


def test_validate_mappings_checks_rule_shapes_up_front():
    LoopsConnector.validate_mappings(S1_MAPPINGS)
    with pytest.raises(MappingError, match=r"mappings\['vote_cast'\] rule 1: unknown field\(s\) emial"):
        LoopsConnector.validate_mappings({"vote_cast": [{"action": "upsert_contact", "emial": "x"}]})


# -- sending: actions -> requests -------------------------------------------------------------


def test_upsert_creates_then_updates_the_contact(serve):
    api = LoopsAPI()
    loops = _loops(serve(api))
    assert loops.send(_upsert("new@example.com", userGroup="Nominator"), "k-1.0") == "contact upserted"
    assert loops.send(_upsert("new@example.com", userGroup="Nominator Live", liveUrl="u"), "k-2.0")
    [contact] = api.contacts()
    assert (contact["email"], contact["userGroup"], contact["liveUrl"]) == ("new@example.com", "Nominator Live", "u")
    assert [(e.kind, e.idempotency_key) for e in api.effects("new@example.com")] == [("create", "k-1.0"),
                                                                                       ("update", "k-2.0")]


def test_event_send_carries_the_idempotency_key_and_a_reused_key_counts_as_delivered(serve):
    api = LoopsAPI()
    server = serve(api)
    loops = _loops(server)
    action = {"action": "send_event", "body": {"email": "v@example.com", "eventName": "voted",
                                               "eventProperties": {"n": 1}}}
    assert loops.send(action, "vote-1.0") == "event sent"
    assert loops.send(action, "vote-1.0").startswith("already delivered")
    assert api.events() == [("v@example.com", "voted", {"n": 1}, "vote-1.0")]
    assert [(e.headers["Idempotency-Key"], e.status) for e in server.log.entries("/api/v1/events")] == [
        ("vote-1.0", 200), ("vote-1.0", 409)]
    assert server.log.entries()[0].headers["Authorization"] == f"Bearer {KEY}"


def test_errors_are_classified_for_the_outbox(serve):
    api = LoopsAPI(known_properties=set())
    server = serve(api)
    loops = _loops(server)
    with pytest.raises(HttpError, match="Contact property 'liveUrl' does not exist") as refused:
        loops.send(_upsert("a@example.com", liveUrl="u"), "k.0")
    assert refused.value.status == 400 and refused.value.status in LoopsConnector.permanent_statuses
    api.outage = 503
    with pytest.raises(TransientError, match="HTTP 503"):
        loops.send(_upsert("a@example.com"), "k.1")
    assert len(server.log) == 2  # no retries inside the worker: the outbox schedules them
    api.outage = None
    bad_key = LoopsConnector({"base_url": server.url + "/api"}, {"api_key": "wrong-key"},
                             Services(config={}, connection_id=2))
    with pytest.raises(AuthError) as denied:
        bad_key.send(_upsert("a@example.com"), "k.2")
    assert "wrong-key" not in str(denied.value)
    with pytest.raises(ConfigError, match="no api_key"):
        LoopsConnector({}, {}, Services(config={})).send(_upsert("a@example.com"), "k.3")


def test_rate_limit_is_shared_by_every_client_of_one_team(serve, limiter_redis_url):
    api = LoopsAPI(rate_limit=(5, 0.5))  # Loops' 10/s, scaled down to keep the test short
    server = serve(api)
    api_keys_team = str(uuid.uuid4())  # a fresh team budget in the shared Redis
    api.api_keys = {api_keys_team: "Test Team"}
    errors = []

    def worker(n):
        # The margin on the window absorbs arrival jitter (the simulator shares this process's GIL).
        loops = LoopsConnector({"base_url": server.url + "/api", "rate_limit": [5, 0.6]},
                               {"api_key": api_keys_team},
                               Services(config={}, redis=redis_lib.Redis.from_url(limiter_redis_url), connection_id=n))
        try:
            for i in range(8):
                loops.send(_upsert(f"w{n}-{i}@example.com"), f"w{n}-{i}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert errors == [] and len(api.contacts()) == 24
    assert api.violations == 0
    assert elapsed >= (24 - 5) / 5 * 0.6  # 24 requests at 5 per 0.6 s take at least 2.28 s


def test_requests_arriving_late_never_put_more_than_the_limit_in_one_of_loops_windows(serve, limiter_redis_url):
    """Loops counts arrivals, and a request arrives some time after our limiter admitted it
    (a descheduled worker, a slow connect). Here the first request of every other window is
    held 0.3 s on its way in, before Loops counts it. A limit on admissions, even over a 5%
    longer window, then let the next window's ten land within a second of it (the chaos
    run's rare overrun)."""
    api = LoopsAPI(rate_limit=(10, 1.0))  # Loops' own numbers, and the connector's default limit
    arrivals, lock = [0], threading.Lock()

    def network(environ, start_response):
        with lock:
            arrivals[0] += 1
            late = arrivals[0] % 20 == 1
        if late:
            time.sleep(0.3)
        return api(environ, start_response)

    server = serve(network)
    team_key = str(uuid.uuid4())  # a fresh team budget in the shared Redis
    api.api_keys = {team_key: "Test Team"}
    errors = []

    def worker(n):  # one outbox worker process each: its own connector, its own Redis client
        loops = LoopsConnector({"base_url": server.url + "/api"}, {"api_key": team_key},
                               Services(config={}, redis=redis_lib.Redis.from_url(limiter_redis_url), connection_id=n))
        try:
            for i in range(10):
                loops.send(_upsert(f"w{n}-{i}@example.com"), f"w{n}-{i}")
        except Exception as exc:  # surfaced below
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - started
    assert errors == [] and api.violations == 0 and len(api.contacts()) == 40
    # ...and the limit is still used: 40 requests, 10 per second plus the held ones' 0.3 s
    # (the slack is for a busy machine; half the rate would need 6 s).
    assert 3.0 <= elapsed < 3 + 2 * 0.3 + 1.9


# -- the simulator itself ----------------------------------------------------------------


def test_simulator_behaves_like_loops(serve):
    api = LoopsAPI(rate_limit=(3, 60))
    base = serve(api).url + "/api/v1"
    auth = {"Authorization": f"Bearer {KEY}"}
    assert requests.get(base + "/api-key", headers={"Authorization": "Bearer nope"}).status_code == 401
    answer = requests.get(base + "/api-key", headers=auth)
    assert answer.json() == {"success": True, "teamName": "Test Team"}
    assert (answer.headers["x-ratelimit-limit"], answer.headers["x-ratelimit-remaining"]) == ("3", "2")
    created = requests.post(base + "/contacts/create", headers=auth, json={"email": "a@example.com", "userId": "u1"})
    assert created.status_code == 200 and created.json()["success"] is True
    again = requests.post(base + "/contacts/create", headers=auth, json={"email": "A@example.com"})
    assert again.status_code == 409 and again.json()["success"] is False
    limited = requests.get(base + "/contacts/find", headers=auth, params={"email": "a@example.com"})
    assert limited.status_code == 429 and limited.headers["x-ratelimit-remaining"] == "0"
    assert api.violations == 1
    api.rate_limit = None
    found = requests.get(base + "/contacts/find", headers=auth, params={"userId": "u1"}).json()
    assert [c["email"] for c in found] == ["a@example.com"]
    assert requests.get(base + "/contacts/find", headers=auth, params={"email": "x@example.com"}).json() == []
    long_key = {**auth, "Idempotency-Key": "k" * 101}
    assert requests.post(base + "/events/send", headers=long_key,
                         json={"email": "a@example.com", "eventName": "e"}).status_code == 400
    assert requests.post(base + "/events/send", headers=auth, json={"email": "a@example.com"}).status_code == 400
    sent = requests.post(base + "/events/send", headers=auth, json={"email": "new@example.com", "eventName": "e",
                                                                     "userGroup": "G"})
    assert sent.status_code == 200 and api.contact("new@example.com")["userGroup"] == "G"
    api.outage = 502
    assert requests.get(base + "/api-key", headers=auth).status_code == 502


def test_simulator_flags_stale_redeliveries_but_not_back_to_back_repeats(serve):
    api = LoopsAPI(rate_limit=None)
    base = serve(api).url + "/v1"

    def put(key, **body):
        requests.put(base + "/contacts/update", headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": key},
                     json={"email": "a@example.com", **body})

    put("k1", userGroup="A")
    put("k1", userGroup="A")  # a redelivery right after the first: same effect
    put("k2", userGroup="B")
    assert api.sequence("a@example.com") == ["k1", "k2"] and api.duplicate_effects() == []
    put("k1", userGroup="A")  # a stale redelivery after a newer change: it undid k2
    assert api.duplicate_effects() == [("a@example.com", "k1")]
