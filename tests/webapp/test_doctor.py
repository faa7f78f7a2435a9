"""`flask sync doctor` names each broken setting and its fix, and passes on a healthy stack."""
import json
import subprocess
import sys

from cryptography.fernet import Fernet

from tests.conftest import one_backend
from tests.support import ROOT, free_port, process_env, wait_for
from webapp.extensions import db
from webapp.models import Connection

pytestmark = one_backend


def doctor(app, **env):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "sync", "doctor"], cwd=ROOT,
                          env=process_env(app, **env), capture_output=True, text=True, timeout=120)


def _line(output, check):
    return next(line for line in output.splitlines() if line[6:].startswith(check))


def test_doctor_reports_each_broken_setting_with_its_fix(app, make_connection, tmp_path):
    conn = make_connection(name="old-key", credentials={"token": "written-with-another-key"})
    # As if written under a key that has since been dropped from SYNCHUB_ENCRYPTION_KEYS.
    token = Fernet(Fernet.generate_key()).encrypt(json.dumps({"token": "written-with-another-key"}).encode())
    db.session.get(Connection, conn.id).credentials_encrypted = token.decode()
    db.session.commit()

    result = doctor(app, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", SYNCHUB_STALE_AFTER_SECONDS=1,
                    SYNCHUB_HEARTBEAT_SECONDS=10)
    out = result.stdout
    assert result.returncode == 1
    assert "FAIL" in _line(out, "configuration") and "make it at least 3x" in out
    assert "FAIL" in _line(out, "redis") and "check REDIS_URL" in _line(out, "redis")
    assert "FAIL" in _line(out, "workers")
    assert "FAIL" in _line(out, "supervisor") and "python -m scheduler" in _line(out, "supervisor")
    assert "FAIL" in _line(out, "credentials") and "old-key" in _line(out, "credentials")
    assert "written-with-another-key" not in out + result.stderr

    fresh = doctor(app, DATABASE_URL=f"sqlite:///{tmp_path}/empty.db")
    assert "FAIL" in _line(fresh.stdout, "database") and "flask --app wsgi db upgrade" in fresh.stdout


def test_doctor_passes_on_a_healthy_stack(app, make_connection, workers):
    make_connection(name="fine", credentials={"token": "abc123456"})
    workers.start()
    scheduler = subprocess.Popen([sys.executable, "-m", "scheduler"], cwd=ROOT, env=process_env(app),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        result = wait_for(lambda: (r := doctor(app)).returncode == 0 and r, timeout=60, interval=1,
                          message="doctor to pass")
        assert "all checks passed" in result.stdout and "FAIL" not in result.stdout
    finally:
        scheduler.kill()
        scheduler.wait()


def test_a_key_file_is_fine_on_one_machine_but_not_with_a_server_database(app):
    from webapp.doctor import check_configuration

    app.config["SYNCHUB_ENCRYPTION_KEYS"] = None
    ok, message = check_configuration()
    if db.engine.dialect.name == "sqlite":  # a fresh `make run`: every process on this machine
        assert ok and "back it up" in message
    else:
        assert not ok and "set it in production" in message
