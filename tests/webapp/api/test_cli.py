"""`flask tokens create|list|revoke`."""
from webapp.extensions import db
from webapp.models import ApiToken


def test_created_token_works_until_revoked_and_is_never_listed(app, client):
    cli = app.test_cli_runner()
    created = cli.invoke(args=["tokens", "create", "reporting"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert token.startswith("shk_")
    assert token not in "".join(r.token_hash for r in db.session.query(ApiToken))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/runs", headers=headers).status_code == 200

    listed = cli.invoke(args=["tokens", "list"])
    assert "reporting" in listed.output and token not in listed.output
    token_id = db.session.query(ApiToken).one().id
    assert cli.invoke(args=["tokens", "revoke", str(token_id)]).exit_code == 0
    assert client.get("/api/runs", headers=headers).status_code == 401
    again = cli.invoke(args=["tokens", "revoke", str(token_id)])
    assert again.exit_code == 1 and "no active token" in again.output
