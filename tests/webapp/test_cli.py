"""`flask sync` and `flask connections`, run as a user would: separate processes."""
import json
import re
import subprocess
import sys

from tests.conftest import one_backend
from tests.support import ROOT, process_env, redis_servers_in
from webapp.extensions import db
from webapp.local_redis import stop_local_redis
from webapp.models import Connection, Run

pytestmark = one_backend


def flask(app, *args, env_overrides=None, input=None, timeout=120):
    env = process_env(app, **(env_overrides or {}))
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def test_sync_run_inline_works_with_no_redis_at_all(app, make_connection, tmp_path):
    make_connection(name="demo", settings={"records": 120, "page_size": 50, "bad_every": 40})
    instance = tmp_path / "fresh-instance"
    result = flask(app, "sync", "run", "demo", "--inline",
                   env_overrides={"REDIS_URL": "", "SYNCHUB_INSTANCE_PATH": str(instance)})
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout and "100.0%" in result.stdout
    assert "created 117" in result.stdout and "skipped 3" in result.stdout  # the pages' word for it
    assert " INFO " not in result.stderr  # quiet by default: the command's own output only
    assert re.search(r"\nrun \d+ completed", result.stdout)  # the final lines start a line of their own
    assert not (instance / "redis.sock").exists() and not (instance / "redis.pid").exists()  # no Redis started


def test_sync_run_queue_follow_waits_for_a_worker_to_finish(app, make_connection, workers):
    make_connection(name="demo", settings={"records": 300, "page_size": 50, "latency_ms": 20})
    workers.start()
    result = flask(app, "sync", "run", "demo", "--queue", "--follow", "--mode", "incremental")
    assert result.returncode == 0, result.stderr
    assert "completed (incremental, cli, attempt 1/3)" in result.stdout
    db.session.expire_all()
    run = db.session.get(Run, int(result.stdout.split()[1].rstrip(":")))
    assert run.status == "completed" and run.trigger == "cli" and run.created == 300


def test_sync_run_of_unknown_connection_fails_with_a_clear_message(app):
    result = flask(app, "sync", "run", "nope", "--inline")
    assert result.returncode == 1 and "no connection 'nope'" in result.stderr


def test_sync_status_list_and_cancel(app, make_connection):
    make_connection(name="demo", settings={"records": 10})
    queued = flask(app, "sync", "run", "demo", "--queue", "--no-follow")
    assert queued.returncode == 0, queued.stderr
    run_id = int(queued.stdout.split()[1].rstrip(":"))
    listed = flask(app, "sync", "list")
    assert listed.stdout.splitlines()[0].split() == ["RUN", "CONNECTION", "MODE", "TRIGGER", "STATUS", "CREATED",
                                                     "(UTC)", "DURATION", "SEEN", "NEW", "CHANGED", "UNCHANGED",
                                                     "DELETED", "SKIPPED"]
    assert f"{run_id:>6}  demo" in listed.stdout and "queued" in listed.stdout
    cancelled = flask(app, "sync", "cancel", str(run_id))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    again = flask(app, "sync", "cancel", str(run_id))
    assert again.returncode == 0 and "had already ended (cancelled): nothing to cancel" in again.stdout
    status = flask(app, "sync", "status", str(run_id), "--json")
    assert json.loads(status.stdout)["status"] == "cancelled"


def test_sync_run_during_another_sync_waits_and_status_says_why(app, make_connection):
    make_connection(name="demo", settings={"records": 10})
    first = int(flask(app, "sync", "run", "demo", "--queue", "--no-follow").stdout.split()[1].rstrip(":"))
    follow = flask(app, "sync", "run", "demo", "--mode", "range", "--since", "2026-01-01", "--queue", "--no-follow")
    assert follow.returncode == 0, follow.stderr
    assert f"waiting: run {first} (another sync of this connection) is active" in follow.stdout
    run_id = int(follow.stdout.split()[1].rstrip(":"))
    shown = json.loads(flask(app, "sync", "status", str(run_id), "--json").stdout)
    assert (shown["status"], shown["not_before"]) == ("waiting", None)
    assert shown["waiting_reason"] == f"waiting for run {first} of this connection to end"
    text = flask(app, "sync", "status", str(run_id)).stdout
    assert f"run {run_id} waiting" in text and f"waiting for run {first} of this connection to end" in text
    assert "cancelled" in flask(app, "sync", "cancel", str(run_id)).stdout


def test_connections_add_encrypts_credentials_and_never_prints_them(app):
    added = flask(app, "connections", "add", "api", "--connector", "rest",
                  "--setting", "base_url=http://127.0.0.1:9", "--setting", 'streams={"items": {"path": "/items"}}',
                  "--credentials-stdin", input=json.dumps({"token": "very-secret-value"}))
    assert added.returncode == 0, added.stderr
    shown = flask(app, "connections", "show", "api")
    listed = flask(app, "connections", "list")
    for output in (added, shown, listed):
        assert "very-secret-value" not in output.stdout + output.stderr
    assert "token=<set>" in shown.stdout
    assert "state:       running normally" in shown.stdout
    db.session.expire_all()
    conn = db.session.query(Connection).filter_by(name="api").one()
    assert "very-secret-value" not in conn.credentials_encrypted
    assert conn.credentials == {"token": "very-secret-value"}


def test_connections_show_states_the_trigger_policy_and_add_refuses_an_unreadable_one(app):
    added = flask(app, "connections", "add", "orders", "--connector", "sandbox",
                  "--setting", 'allowed_triggers=["webhook", "manual"]')
    assert added.returncode == 0, added.stderr
    assert "triggers:    manual (admin and CLI), webhook\n" in flask(app, "connections", "show", "orders").stdout
    assert flask(app, "connections", "add", "zoom", "--connector", "sandbox").returncode == 0
    assert ("triggers:    manual (admin and CLI), API (the default for a manual-only connection)"
            in flask(app, "connections", "show", "zoom").stdout)
    typo = flask(app, "connections", "add", "typo", "--connector", "sandbox", "--setting", "allowed_triggers=cli")
    assert typo.returncode != 0 and "allowed_triggers must be a list" in typo.stdout + typo.stderr
    db.session.expire_all()
    assert db.session.query(Connection).filter_by(name="orders").one().settings == {
        "allowed_triggers": ["manual", "webhook"]}
    assert db.session.query(Connection).filter_by(name="typo").first() is None


def test_the_bundled_redis_note_stays_out_of_a_persons_terminal_unless_verbose(app, make_connection, tmp_path):
    make_connection(name="demo", settings={"records": 10})
    make_connection(name="other", settings={"records": 10})
    # As on a fresh machine: no REDIS_URL, the default log level (the tests' processes run at WARNING).
    env = {"REDIS_URL": "", "SYNCHUB_LOG_LEVEL": "INFO"}
    instances = [str(tmp_path / "one"), str(tmp_path / "two")]
    try:
        quiet = flask(app, "sync", "run", "demo", "--queue", "--no-follow",
                      env_overrides=dict(env, SYNCHUB_INSTANCE_PATH=instances[0]))
        assert quiet.returncode == 0, quiet.stderr
        assert "REDIS_URL is not set" not in quiet.stdout + quiet.stderr
        verbose = flask(app, "sync", "-v", "run", "other", "--queue", "--no-follow",
                        env_overrides=dict(env, SYNCHUB_INSTANCE_PATH=instances[1]))
        assert verbose.returncode == 0 and "REDIS_URL is not set" in verbose.stderr
    finally:  # the bundled servers the two commands started outlive them, by design: not the test's
        for instance in instances:
            stop_local_redis(instance)
            assert redis_servers_in(instance) == []
