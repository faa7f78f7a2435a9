"""`flask --app wsgi supervisor ...`: what an operator sees and can do from a shell."""
import subprocess
import sys
from datetime import timedelta

from scheduler.cli import supervisor_cli
from scheduler.supervisor import Supervisor
from tests.support import ROOT, process_env
from webapp import alerts, runs
from webapp.models import FAILED, utcnow


def test_status_shows_the_leader_its_heartbeat_and_open_alerts(app, redis, make_connection):
    conn = make_connection(name="zoom")
    for _ in range(3):
        run = runs.trigger(conn, trigger="api", enqueue=False).run
        runs.finish(run.id, runs.claim(run.id, "w"), FAILED, error_message="401")
    supervisor = Supervisor(app, name="sup-1")
    supervisor.tick()
    alerts.sync_alerts()
    out = app.test_cli_runner().invoke(supervisor_cli, ["status"]).output
    assert "leader (Redis lease): sup-1" in out
    assert "sup-1" in out and "LEADER" in out and "alive" in out
    assert "open alerts: 1" in out and "[consecutive_failures] zoom:" in out


def test_alerts_sync_fires_conditions_even_with_no_supervisor_running(app, redis):
    runner = app.test_cli_runner()
    out = runner.invoke(supervisor_cli, ["alerts", "--sync"]).output
    assert "fired 1, cleared 0" in out and "[supervisor_silent]" in out
    assert "fired 0, cleared 0" in runner.invoke(supervisor_cli, ["alerts", "--sync"]).output


def test_cleanup_and_schedules_commands(app, make_connection):
    make_connection(name="hourly", schedule="hourly:0").next_run_at = utcnow() + timedelta(minutes=5)
    make_connection(name="typo", schedule="every:0")
    runner = app.test_cli_runner()
    out = runner.invoke(supervisor_cli, ["schedules"]).output
    assert "hourly at minute 0" in out and "UNUSABLE" in out and "between 1 and" in out
    assert "runs=0" in runner.invoke(supervisor_cli, ["cleanup", "--days", "30"]).output
    result = runner.invoke(supervisor_cli, ["cleanup", "--days", "0"])
    assert result.exit_code != 0 and "positive number of days" in result.output


def test_the_flask_command_has_the_supervisor_group(app):
    """wsgi.py, the app `flask --app wsgi` loads, adds the group webapp does not import."""
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "supervisor", "status"], cwd=ROOT,
                         env=process_env(app), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "leader (Redis lease): nobody" in out.stdout
