"""The brake on wrong API credentials: one client address sending wrong tokens or cron
secrets gets 429 with Retry-After; other clients, with good tokens, go on unaffected."""
from webapp.api.auth import create_token

ATTACKER, OTHER = "203.0.113.66", "198.51.100.20"


def _get(client, token, address):
    return client.get("/api/runs", headers={"Authorization": f"Bearer {token}"},
                      environ_base={"REMOTE_ADDR": address})


def test_many_wrong_tokens_from_one_client_get_429_and_others_go_on(app, client, token):
    app.config["API_MAX_AUTH_FAILURES"] = 20
    for i in range(20):
        assert _get(client, f"shk_guess{i}", ATTACKER).status_code == 401
    braked = _get(client, "shk_guess-more", ATTACKER)
    assert braked.status_code == 429
    assert braked.json["error"] == "too_many_requests"
    assert 1 <= int(braked.headers["Retry-After"]) <= app.config["API_AUTH_BRAKE_SECONDS"]
    # Even a good token is not looked at from the braked address: it would tell a guesser
    # when it had guessed right.
    assert _get(client, token, ATTACKER).status_code == 429
    # Another client with a good token is served; with a wrong one it gets its own 401.
    assert _get(client, token, OTHER).status_code == 200
    assert _get(client, "shk_typo", OTHER).status_code == 401


def test_requests_without_credentials_do_not_count(app, client, token):
    app.config["API_MAX_AUTH_FAILURES"] = 3
    for _ in range(10):
        assert client.get("/api/runs", environ_base={"REMOTE_ADDR": ATTACKER}).status_code == 401
    assert _get(client, token, ATTACKER).status_code == 200


def test_wrong_cron_secrets_count_too_and_the_brake_lapses(app, client, cron, redis):
    app.config["API_MAX_AUTH_FAILURES"] = 3
    for _ in range(3):
        response = client.post("/api/cron/sync/nothing", headers={"X-Cron-Secret": "wrong"},
                               environ_base={"REMOTE_ADDR": ATTACKER})
        assert response.status_code == 401
    response = client.post("/api/cron/no-such-job", headers=cron, environ_base={"REMOTE_ADDR": ATTACKER})
    assert response.status_code == 429
    # The window is kept in Redis with an expiry; when it has passed the client is heard again.
    from webapp import redis_keys

    redis.delete(redis_keys.key("api-auth-failures", ATTACKER))
    response = client.post("/api/cron/no-such-job", headers=cron, environ_base={"REMOTE_ADDR": ATTACKER})
    assert response.status_code == 404


def test_the_window_is_set_once_at_the_first_failure(app, client, redis):
    """A steady trickle of failures cannot keep pushing the window's end out forever, and the
    count lives no longer than the window."""
    from webapp import redis_keys

    app.config["API_AUTH_BRAKE_SECONDS"] = 120
    _get(client, "shk_wrong", ATTACKER)
    key = redis_keys.key("api-auth-failures", ATTACKER)
    assert 0 < redis.ttl(key) <= 120
    redis.expire(key, 50)
    _get(client, "shk_wrong", ATTACKER)
    assert redis.ttl(key) <= 50 and int(redis.get(key)) == 2
    create_token("unused")  # a token existing changes nothing for a wrong one
    assert _get(client, "shk_wrong", ATTACKER).status_code == 401
