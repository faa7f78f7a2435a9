"""Connection health as a person meets it (Debian's Chromium, gunicorn, a real worker):
HaloPSA revokes synchub's client, the next sync fails, one auth_expired issue opens, the
connection pauses and its scheduled slots start nothing, one notification reaches the
team's endpoint; new credentials saved in the admin resolve it, resume the connection and
one proving run completes, with one "resolved" notification. Screenshots in test-output/."""
import os

import pytest

from scheduler.supervisor import Supervisor
from tests.browser import OUTPUT, chromium
from tests.scenarios.conftest import finished
from tests.simulators.halopsa import HaloAPI
from tests.simulators.receiver import NotificationReceiver
from tests.support import wait_for
from tests.webapp.admin.support import browser_login, one_backend
from tests.webapp.webhooks.signing import whsec
from webapp import runs
from webapp.extensions import db
from webapp.models import COMPLETED, FAILED, Connection, ConnectionIssue, Run, utcnow


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def _connection(conn_id):
    db.session.expire_all()
    found = db.session.get(Connection, conn_id)
    db.session.rollback()
    return found


def _fire_next_slot(supervisor, conn_id):
    slot = _connection(conn_id).next_run_at
    assert slot is not None
    return supervisor.tick(slot)


@one_backend
def test_revoked_credentials_pause_the_connection_until_new_ones_are_saved_in_the_admin(
        app, browser, live_server, admin_user, make_connection, workers, serve):
    backend = app.config["SQLALCHEMY_DATABASE_URI"].split(":", 1)[0].split("+")[0]
    api = HaloAPI(tickets=30, agents=2)
    api.server = serve(api)
    secret = whsec()
    receiver = NotificationReceiver(secret)
    receiver.server = serve(receiver)
    make_connection(name="team-alerts", connector="notify", settings={"format": "standard"},
                    credentials={"url": receiver.server.url + "/synchub", "signing_secret": secret})
    conn = make_connection(name="halo", connector="halopsa", schedule="hourly:0",
                           credentials={"client_id": "halo-client", "client_secret": "halo-client-secret"},
                           settings={"base_url": api.server.url, "fiscal_year_start_month": 7, "page_size": 10,
                                     "freshness_minutes": 120})
    workers.start()
    assert finished(runs.trigger(conn, trigger="manual").run.id).status == COMPLETED

    api.revoke()  # HaloPSA disables synchub's client: every token request is refused
    failed = finished(runs.trigger(_connection(conn.id), trigger="manual").run.id)
    assert failed.status == FAILED and failed.error_class == "auth"
    wait_for(lambda: receiver.of_type("issue.opened"), timeout=60, message="the issue's notification")
    issues = db.session.query(ConnectionIssue).all()
    assert [(i.cause, i.occurrences, i.resolved_at) for i in issues] == [("auth_expired", 1, None)]
    assert _connection(conn.id).paused_reason == "credentials expired"

    # The next three hourly slots start nothing, and are counted.
    supervisor = Supervisor(app, name="health-supervisor")
    supervisor.tick(utcnow())
    for _ in range(3):
        assert [o.action for o in _fire_next_slot(supervisor, conn.id)] == ["refused"]
    assert _connection(conn.id).paused_skipped == 3
    assert db.session.query(Run).filter(Run.connection_id == conn.id).count() == 2

    page = browser_login(browser, live_server, admin_user)
    card = page.locator('article.connection[data-name="halo"]')
    assert card.locator(".badge.paused").is_visible()
    pause = card.locator("p.pause").text_content()
    assert pause.startswith("paused: credentials expired since ") and pause.endswith("3 runs skipped")
    assert card.locator("ul.issues").text_content().strip().startswith("credentials expired: 1 time since")
    assert "nothing to sync" in page.locator('article.connection[data-name="team-alerts"]').text_content()
    assert "target 2.0 h" in card.locator("dd.data-age").text_content()
    assert "fresh-green" in card.locator("dd.data-age").get_attribute("class")
    page.screenshot(path=os.path.join(OUTPUT, f"dashboard-paused-{backend}.png"), full_page=True)

    page.click('nav a:has-text("Issues")')
    row = page.locator('#open-issues tr[data-cause="auth_expired"]')
    assert "halo" in row.text_content() and "credentials expired" in row.text_content()
    assert "halo: paused: credentials expired" in page.locator("#paused").text_content()
    page.screenshot(path=os.path.join(OUTPUT, f"issues-{backend}.png"), full_page=True)

    # The admin asks HaloPSA for a new client secret and saves it.
    api.client_secret, api.client_enabled = "rotated-client-secret", True
    page.goto(live_server.url + f"/admin/connections/{conn.id}/edit")
    page.fill('input[name="credential.client_secret"]', "rotated-client-secret")
    page.click('button:has-text("Save")')
    page.wait_for_url(live_server.url + "/admin/")
    flash = page.locator("body").text_content()
    assert "halo resumed: run " in flash and "checks the fix" in flash
    proving_id = int(flash.split("halo resumed: run ", 1)[1].split(" ", 1)[0])
    assert finished(proving_id).status == COMPLETED
    wait_for(lambda: receiver.of_type("issue.resolved"), timeout=60, message="the resolved notification")
    db.session.expire_all()
    [issue] = db.session.query(ConnectionIssue).all()
    assert issue.resolved_at is not None and issue.resolution.startswith("new credentials saved by admin@example.com")
    assert _connection(conn.id).paused_at is None
    assert (len(receiver.of_type("issue.opened")), len(receiver.of_type("issue.resolved"))) == (1, 1)
    assert receiver.refused == 0

    page.goto(live_server.url + "/admin/")
    assert page.locator('article.connection[data-name="halo"] .badge.paused').count() == 0
    page.screenshot(path=os.path.join(OUTPUT, f"dashboard-resumed-{backend}.png"), full_page=True)
    page.context.close()
