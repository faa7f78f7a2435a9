"""Structured logs: one run followed across processes by its id; secrets never printed."""
import json
import logging
import subprocess
import sys

from tests.support import ROOT, process_env, wait_for
from webapp import logs
from webapp.extensions import db
from webapp.models import Connection, Run
from webapp.queue import run_job_id


def _json_lines(text):
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_one_run_can_be_followed_across_cli_and_worker_by_run_id(app, make_connection, workers, tmp_path):
    make_connection(name="demo", settings={"records": 60, "page_size": 20})
    worker_log = tmp_path / "worker.log"
    worker = workers.start(log_path=str(worker_log), env={"SYNCHUB_LOG_FORMAT": "json", "SYNCHUB_LOG_LEVEL": "INFO"})
    # -v: the CLI is quiet by default; a person following a run in the logs asks for them.
    cli = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "sync", "-v", "run", "demo", "--queue",
                          "--follow"],
                         cwd=ROOT, env=process_env(app, SYNCHUB_LOG_FORMAT="json", SYNCHUB_LOG_LEVEL="INFO"), capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    run_id = db.session.query(Run.id).scalar()
    wait_for(lambda: any(e.get("run_id") == run_id and "ended" in e["message"] for e in _json_lines(worker.output())),
             timeout=30, message="the worker's log of the run")
    cli_lines = [e for e in _json_lines(cli.stderr) if e.get("run_id") == run_id]
    worker_lines = [e for e in _json_lines(worker.output()) if e.get("run_id") == run_id]
    assert any("queued" in e["message"] for e in cli_lines)
    assert worker_lines and {e["process"] for e in worker_lines}.isdisjoint({e["process"] for e in cli_lines})
    started = next(e for e in worker_lines if "started" in e["message"])
    assert started["connection"] == "demo" and started["trigger"] == "cli" and started["attempt"] == 1
    assert started["rq_job_id"] == run_job_id(run_id, 1)


def test_redaction_defeats_secrets_in_exceptions_urls_and_provider_bodies(app, make_connection, capsys):
    conn = make_connection(name="leaky", credentials={"api_key": "AKIA-very-secret-42", "client_secret": "cs-0987654321"})
    db.session.expire_all()
    db.session.get(Connection, conn.id).credentials  # decrypting registers the values for redaction
    log = logging.getLogger("synchub.test")
    for fmt in ("text", "json"):
        logs.configure(fmt=fmt)
        try:
            raise RuntimeError("provider said: invalid key AKIA-very-secret-42")
        except RuntimeError:
            log.exception("sync failed")
        log.warning("GET https://api.example.com/v1/items?page=2&api_key=unregistered-key-123&x=1")
        log.warning("provider error body: %s", '{"error": "bad", "access_token": "tok-unregistered-777"}')
        log.warning("request headers: Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig")
        log.warning("connecting to postgresql://app:db-password-555@db.internal/app")
        log.error("client secret was %r", "cs-0987654321")
    out = capsys.readouterr().err
    for secret in ("AKIA-very-secret-42", "unregistered-key-123", "tok-unregistered-777", "eyJhbGciOiJIUzI1NiJ9",
                   "db-password-555", "cs-0987654321"):
        assert secret not in out, secret
    assert out.count("[redacted]") >= 12 and "sync failed" in out and "page=2" in out
