"""/api/openapi.json describes every API route, and the implementation keeps its word:
schemathesis, run as its command-line tool with every check (`--checks all`: status codes,
schemas, content types, headers, schema-valid requests accepted and schema-violating ones
refused, undeclared methods, authentication), generates requests from the document and
sends them to the app served over real HTTP."""
import re
import subprocess
import sys

from tests.conftest import one_backend
from tests.simulators.harness import SimulatorServer

from .conftest import CRON_SECRET

# Per operation and phase. The issue asked for a few hundred; that takes well over 90 s
# on two cores, this about a minute: docs/PERFORMANCE.md, "API contract fuzzing".
MAX_EXAMPLES = 150
SEED = 19  # one sequence of requests, the same in every run: a failure can be replayed


def _route_to_openapi(rule):
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_api_route_is_described(app, client):
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    routes = {(_route_to_openapi(rule.rule), method) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/") for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes - described == set(), "routes missing from /api/openapi.json"
    assert described - routes == set(), "described operations that do not exist"


def test_an_undeclared_method_is_answered_405_with_the_allowed_ones(client, auth):
    answer = client.delete("/api/runs", headers=auth)
    assert answer.status_code == 405 and answer.get_json()["error"] == "method_not_allowed"
    assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS"}


def test_run_enums_come_from_the_model(client):
    from webapp.models import MODES, STATUSES, TRIGGERS

    run = client.get("/api/openapi.json").get_json()["components"]["schemas"]["Run"]["properties"]
    assert (run["status"]["enum"], run["mode"]["enum"], run["trigger"]["enum"]) == (
        list(STATUSES), list(MODES), list(TRIGGERS))


# One backend, PostgreSQL when the run has it: that is where NUL and 64-bit ids break things.
@one_backend
def test_api_keeps_its_contract_under_every_schemathesis_check(app, make_connection, token, tmp_path):
    from webapp import runs

    app.config["CRON_SECRET"] = CRON_SECRET
    scheduled = make_connection(name="fuzz", schedule="every:60", settings={
        "event_triggers": {"fiscal_year.created": {"mode": "range", "params": {"fiscal_year": "{data.fiscal_year}"}}}})
    run = runs.trigger(scheduled, enqueue=False).run
    # Half of the connection keys and run ids name ones that exist, so the operations behind
    # them get past their 404 to their own logic; the other half stay generated.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f"""
[dictionaries.connections]
values = ["fuzz", "{scheduled.id}"]

[dictionaries.runs]
values = [{run.id}]

[parameters]
"path.key" = {{ dictionary = "connections", probability = 0.5 }}
"path.run_id" = {{ dictionary = "runs", probability = 0.5 }}
""")
    with SimulatorServer(app) as server:
        command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
                   "--config-file", str(config), "run", f"{server.url}/api/openapi.json",
                   "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-database", "none", "--suppress-health-check", "all",
                   "--request-timeout", "30", "--no-color",
                   # The API token for /api, the shared secret for /api/cron (which wins there).
                   "--header", f"Authorization: Bearer {token}", "--header", f"X-Cron-Secret: {CRON_SECRET}"]
        # In tmp_path: schemathesis keeps a cache of its own in its working directory.
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-8000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and generated.group(1) == generated.group(2), report[-3000:]
    assert int(generated.group(1)) >= 15 * MAX_EXAMPLES  # every operation was really exercised
