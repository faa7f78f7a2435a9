"""Every bad input of `flask sync run` and `flask connections add/edit` is refused before
anything is stored: non-zero exit, a sentence saying what to fix, no run row (issue 18).
`flask connections test` against the HaloPSA simulator: what came back, or the 401 in words."""
import uuid

import pytest

from tests.conftest import one_backend
from tests.simulators.halopsa import HaloAPI
from tests.webapp.test_cli import flask
from webapp.extensions import db
from webapp.models import Connection, Run

pytestmark = one_backend


@pytest.mark.parametrize("args, message", [
    (["--mode", "range", "--since", "notadate"], "the start date (since) 'notadate' is not a real date"),
    (["--mode", "range", "--since", "2024-13-45"], "the start date (since) '2024-13-45' is not a real date"),
    (["--mode", "range", "--since", "2025-01-01", "--until", "2024-01-01"],
     "the start date 2025-01-01 must be before the end date 2024-01-01"),
    (["--since", "2025-01-01"], "applies only to a date-range run (mode range); this is a full run"),
    (["--mode", "incremental", "--until", "2025-01-01"], "this is a incremental run"),
    (["--mode", "range"], "a date-range run needs a start date, an end date, or both"),
    (["--stream", "nosuchstream"], "demo has no stream 'nosuchstream'; its streams are items"),
    (["--param", "fiscal_year=next"], "the fiscal year 'next' is not a year like 2026"),
    (["--param", "fiscal_year=2031"], "the fiscal year 2031 is not one of this connection's: 2025, 2026"),
    (["--mode", "range", "--since", "2025-01-01", "--param", "fiscal_year=2025"],
     "choose either a fiscal year or a date range, not both"),
])
def test_sync_run_refuses_bad_input_before_creating_a_run(app, make_connection, args, message):
    make_connection(name="demo", settings={"records": 10, "fiscal_years": [2025, 2026]})
    result = flask(app, "sync", "run", "demo", "--inline", *args)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    db.session.expire_all()
    assert db.session.query(Run).count() == 0


def test_sync_run_with_good_range_still_runs(app, make_connection):
    make_connection(name="demo", settings={"records": 10})
    result = flask(app, "sync", "run", "demo", "--inline", "--mode", "range", "--since", "2025-01-01",
                   "--until", "2027-01-01")
    assert result.returncode == 0, result.stderr
    db.session.expire_all()
    [run] = db.session.query(Run).all()
    assert (run.mode, run.params, run.status, run.seen) == ("range", {"since": "2025-01-01", "until": "2027-01-01"},
                                                            "completed", 10)


def test_connections_add_and_edit_check_settings_by_their_declared_type(app):
    refused = flask(app, "connections", "add", "demo", "--connector", "sandbox",
                    "--setting", "records=lots", "--setting", "page_size=0", "--setting", "auth_fail=maybe")
    assert refused.returncode == 1
    assert ("settings need fixing: records must be a whole number from 0 to 10000000; "
            "page_size must be a whole number from 1 to 10000; auth_fail must be yes or no") in refused.stderr
    db.session.expire_all()
    assert db.session.query(Connection).count() == 0
    assert flask(app, "connections", "add", "demo", "--connector", "sandbox", "--setting", "records=12").returncode == 0
    bad_edit = flask(app, "connections", "edit", "demo", "--setting", "latency_ms=-5")
    assert bad_edit.returncode == 1 and "latency_ms must be a whole number from 0 to 60000" in bad_edit.stderr
    good_edit = flask(app, "connections", "edit", "demo", "--setting", "page_size=5", "--unset", "records",
                      "--setting", "fail_at_offset=10")
    assert good_edit.returncode == 0, good_edit.stderr
    db.session.expire_all()
    assert db.session.query(Connection).one().settings == {"page_size": 5, "fail_at_offset": 10}


@pytest.fixture
def halo(serve):
    api = HaloAPI(tickets=30, agents=3)
    api.server = serve(api)
    return api


def test_connections_test_reads_the_first_page_of_each_stream_and_stores_nothing(app, halo):
    from webapp.models import Record

    settings = f'{{"base_url": "{halo.server.url}", "rate_limit_key": "probe-{uuid.uuid4().hex}"}}'
    for name, secret in (("halo", "halo-client-secret"), ("wrong", "not-the-secret")):
        added = flask(app, "connections", "add", name, "--connector", "halopsa", "--settings-json", settings,
                      "--credentials-stdin", input=f'{{"client_id": "halo-client", "client_secret": "{secret}"}}')
        assert added.returncode == 0, added.stderr
    ok = flask(app, "connections", "test", "halo")
    assert ok.returncode == 0, ok.stderr
    assert "agents           ok      3 of 3 records; fields: app_user, email, id" in ok.stdout
    assert "tickets          ok      30 of 30 records; fields:" in ok.stdout
    assert "Connected: every stream answered." in ok.stdout
    refused = flask(app, "connections", "test", "wrong")
    assert refused.returncode == 1
    assert "FAILED  The provider refused the credentials" in refused.stdout
    assert "not-the-secret" not in refused.stdout + refused.stderr
    db.session.expire_all()
    assert db.session.query(Run).count() == 0 and db.session.query(Record).count() == 0
