"""A declared connector in the admin: its file's settings and credentials are the form's
fields, and a connection made there syncs like any other."""
from tests.simulators.halopsa import HaloAPI
from tests.webapp.admin.support import csrf_token
from webapp.extensions import db
from webapp.models import COMPLETED, Connection, Record, Run
from worker.engine import execute_run

SECRET = "halo-client-secret"


def test_a_declared_connector_is_offered_with_its_files_fields_and_syncs(client, serve, redis):
    halo = HaloAPI(tickets=120, agents=3)
    halo.server = serve(halo)
    page = "/admin/connections/new?connector=halopsa_declared"
    html = client.get(page).get_data(as_text=True)
    for field in ("setting.base_url", "setting.page_concurrency", "setting.agent_mappings",
                  "credential.client_id", "credential.client_secret"):
        assert f'name="{field}"' in html
    form = {"connector": "halopsa_declared", "name": "halo", "setting.base_url": halo.server.url,
            "setting.agent_mappings": '{"2": "bob@app.example"}', "credential.client_id": "halo-client",
            "credential.client_secret": SECRET, "schedule": "manual", "enabled": "1",
            "csrf_token": csrf_token(html)}
    assert client.post("/admin/connections/new", data=form).status_code == 302
    connection = Connection.query.filter_by(name="halo").one()
    assert connection.settings["agent_mappings"] == {"2": "bob@app.example"} and SECRET not in str(connection.settings)

    from webapp import runs

    run = runs.trigger(connection, enqueue=False).run
    assert execute_run(run.id, redis_client=redis, worker_name="t") == COMPLETED
    assert db.session.get(Run, run.id).created == 123  # 120 tickets and 3 agents
    mapped = {r.data["id"]: r.data["app_user"] for r in Record.query.filter_by(stream="agents")}
    assert mapped == {1: None, 2: "bob@app.example", 3: None}
