"""The API tokens page: create (shown once), list, revoke, against the real /api."""
import logging
import re

from tests.webapp.admin.support import csrf_token, new_client

_SHOWN = re.compile(r'id="new-token-value">(shk_[A-Za-z0-9_-]+)<')


def _csrf(client):
    return csrf_token(client.get("/admin/tokens").get_data(as_text=True))


def _create(client, name):
    response = client.post("/admin/tokens", data={"name": name, "csrf_token": _csrf(client)})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    html = response.get_data(as_text=True)
    match = _SHOWN.search(html)
    assert match, html[:2000]
    return match.group(1), response


def _tokens():
    from webapp.extensions import db
    from webapp.models import ApiToken

    db.session.expire_all()
    return db.session.query(ApiToken).order_by(ApiToken.id).all()


def _api(app, token):
    # A separate client without the admin's session cookie: only the bearer token counts.
    return new_client(app).get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code


def test_logged_out_cannot_see_create_or_revoke(app, admin_user):
    from webapp.api.auth import create_token

    token = create_token("existing")
    [row] = _tokens()
    client = new_client(app)
    for method, url in (("GET", "/admin/tokens"), ("POST", "/admin/tokens"),
                        ("POST", f"/admin/tokens/{row.id}/revoke")):
        response = client.open(url, method=method, data={"name": "sneaky"})
        assert response.status_code == 302, (method, url)
        assert response.headers["Location"].startswith("/admin/login"), (method, url)
    assert [t.name for t in _tokens()] == ["existing"] and _tokens()[0].revoked_at is None
    assert _api(app, token) == 200


def test_token_created_on_the_page_works_on_the_api_and_is_shown_only_once(app, client, caplog):
    caplog.set_level(logging.DEBUG)
    token, response = _create(client, "reporting")
    html = response.get_data(as_text=True)
    assert "Copy it now: it will not be shown again." in html
    assert response.headers["Cache-Control"] == "no-store"
    [row] = _tokens()
    assert row.name == "reporting" and row.token_hash != token and token not in row.token_hash
    assert row.last_used_at is None

    assert _api(app, token) == 200
    assert _api(app, token + "x") == 401

    for page in ("/admin/tokens", "/admin/", "/admin/runs", "/admin/health"):
        later = client.get(page).get_data(as_text=True)
        assert token not in later and row.token_hash not in later, page
    listing = client.get("/admin/tokens").get_data(as_text=True)
    mine = listing[listing.index(f'id="token-{row.id}"'):]
    mine = mine[:mine.index("</tr>")]
    assert "reporting" in mine and "active" in mine and "Revoke" in mine and "never" not in mine
    assert "new-token-value" not in listing

    # The creation was logged (so capture works), and the token never was.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"API token {row.id} created by admin@example.com" in logged
    assert token not in logged and token not in caplog.text


def test_revoke_on_the_page_stops_the_token_at_once(app, client):
    token, _ = _create(client, "ci")
    keep, _ = _create(client, "keep")
    assert _api(app, token) == 200
    ci = next(t for t in _tokens() if t.name == "ci")

    response = client.post(f"/admin/tokens/{ci.id}/revoke", data={"csrf_token": _csrf(client)})
    assert response.status_code == 302 and response.headers["Location"] == "/admin/tokens"
    assert _api(app, token) == 401
    assert _api(app, keep) == 200  # only the one asked for

    page = client.get("/admin/tokens").get_data(as_text=True)
    assert "Token ci revoked" in page
    row = page[page.index(f'id="token-{ci.id}"'):]
    row = row[:row.index("</tr>")]
    assert "revoked" in row and "Revoke</button>" not in row and f"/admin/tokens/{ci.id}/revoke" not in row
    revoked_at = next(t for t in _tokens() if t.name == "ci").revoked_at
    assert revoked_at is not None

    # Again: nothing changes, and the page says so.
    client.post(f"/admin/tokens/{ci.id}/revoke", data={"csrf_token": _csrf(client)})
    assert next(t for t in _tokens() if t.name == "ci").revoked_at == revoked_at
    assert "Token ci was already revoked" in client.get("/admin/tokens").get_data(as_text=True)
    response = client.post("/admin/tokens/999999/revoke", data={"csrf_token": _csrf(client)})
    assert response.status_code == 302
    assert "There is no API token 999999" in client.get("/admin/tokens").get_data(as_text=True)


def test_posts_without_csrf_are_refused(app, client):
    from webapp.api.auth import create_token

    token = create_token("existing")
    [row] = _tokens()
    assert client.post("/admin/tokens", data={"name": "forged"}).status_code == 400
    assert client.post(f"/admin/tokens/{row.id}/revoke").status_code == 400
    assert client.post(f"/admin/tokens/{row.id}/revoke", data={"csrf_token": "wrong"}).status_code == 400
    assert [(t.name, t.revoked_at) for t in _tokens()] == [("existing", None)]
    assert _api(app, token) == 200


def test_names_are_escaped(app, client):
    name = '<script>alert("x")</script>'
    token, response = _create(client, name)
    for html in (response.get_data(as_text=True), client.get("/admin/tokens").get_data(as_text=True)):
        assert name not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    [row] = _tokens()
    client.post(f"/admin/tokens/{row.id}/revoke", data={"csrf_token": _csrf(client)})
    html = client.get("/admin/tokens").get_data(as_text=True)
    assert name not in html and "Token &lt;script&gt;" in html
    assert _api(app, token) == 401


def test_blank_or_too_long_names_are_refused(app, client):
    for name in ("", "   ", "x" * 101):
        response = client.post("/admin/tokens", data={"name": name, "csrf_token": _csrf(client)})
        assert response.status_code == 400, name
        html = response.get_data(as_text=True)
        assert "a name of 1 to 100 characters is required" in html and "new-token-value" not in html
    assert _tokens() == []


def test_nav_links_to_the_tokens_page(client):
    html = client.get("/admin/").get_data(as_text=True)
    assert '<a href="/admin/tokens">API tokens</a>' in html
