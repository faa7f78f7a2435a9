"""/api/openapi.json describes every API route, and the implementation keeps its word:
schemathesis generates requests from the document and checks every answer against it."""
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.simulators.harness import SimulatorServer

from .conftest import CRON_SECRET

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
MAX_EXAMPLES = 5  # per operation and mode: keeps the run to seconds per backend


def _route_to_openapi(rule):
    import re

    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_api_route_is_described(app, client):
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in document["paths"].items() for method in ops}
    routes = {(_route_to_openapi(rule.rule), method) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/") for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes - described == set(), "routes missing from /api/openapi.json"
    assert described - routes == set(), "described operations that do not exist"


def _fuzz(operation, mode, headers, failures, base_url):
    @given(case=operation.as_strategy(generation_mode=mode))
    # No shrinking or explaining: a failure is reported as found, and the run stays short.
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=30)

    try:
        check()
    except (Exception, BaseExceptionGroup) as exc:  # keep going: report every failing operation
        failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])


def test_api_answers_conform_to_the_document(app, make_connection, auth):
    """Over real HTTP, so each request has its own app context and session, as in production."""
    from webapp import runs

    app.config["CRON_SECRET"] = CRON_SECRET
    scheduled = make_connection(name="fuzz", schedule="every:60", settings={
        "event_triggers": {"fiscal_year.created": {"mode": "range", "params": {"fiscal_year": "{data.fiscal_year}"}}}})
    runs.trigger(scheduled, enqueue=False)
    failures = []
    with SimulatorServer(app) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            headers = {"X-Cron-Secret": CRON_SECRET} if operation.path.startswith("/api/cron") else dict(auth)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, headers, failures, server.url)
    assert not failures, "\n\n".join(failures)
