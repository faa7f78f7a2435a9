"""The admin as a person uses it: Debian's Chromium driven by Playwright against gunicorn,
with a real worker process syncing a sandbox connection slow enough to watch.

Screenshots of the dashboard and the run page go to test-output/ (kept by CI as artifacts).
"""
import os

import pytest

from tests.browser import OUTPUT, chromium
from tests.support import wait_for
from tests.webapp.admin.support import PASSWORD, browser_login, one_backend


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def _card(page, name):
    return page.locator(f'article.connection[data-name="{name}"]')


@one_backend
def test_sync_from_the_dashboard_shows_live_progress_and_cancel_works(app, browser, live_server, admin_user,
                                                                      make_connection, workers):
    from webapp.extensions import db
    from webapp.models import Run

    backend = app.config["SQLALCHEMY_DATABASE_URI"].split(":", 1)[0].split("+")[0]
    make_connection(name="sandbox-demo", settings={"records": 300, "page_size": 15, "latency_ms": 100})
    make_connection(name="slow", settings={"records": 5000, "page_size": 10, "latency_ms": 150})
    workers.start()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors = []
    page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)

    # Log in.
    page.goto(live_server.url + "/admin/")
    assert "/admin/login" in page.url
    page.fill('input[name="email"]', admin_user)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button:has-text("Sign in")')
    page.wait_for_url(live_server.url + "/admin/")
    assert _card(page, "sandbox-demo").is_visible()
    page.screenshot(path=os.path.join(OUTPUT, f"dashboard-{backend}.png"), full_page=True)

    # Sync now, and watch the bar reach 100% through the websocket, without a reload.
    card = _card(page, "sandbox-demo")
    card.locator('select[name="mode"]').select_option("full")
    card.locator('button:has-text("Sync now")').click()
    page.wait_for_url("**/admin/runs/*")
    page.evaluate("""() => {
        window.__sameDocument = true;
        window.__percents = [];
        new MutationObserver(() => window.__percents.push(document.getElementById('bar').value))
            .observe(document.getElementById('bar'), {attributes: true});
    }""")
    page.wait_for_function("() => document.getElementById('run').dataset.transport === 'websocket'")
    page.wait_for_function("() => document.getElementById('bar').value >= 100")
    page.wait_for_function("() => document.getElementById('run').dataset.status === 'completed'")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    percents = page.evaluate("window.__percents")
    assert any(0 < p < 100 for p in percents), f"no intermediate progress seen: {percents}"
    assert page.text_content("#percent") == "100.0%"
    assert page.text_content("#processed") == "300" and page.text_content("#c-created") == "300"
    log = page.locator("#log li").all_text_contents()
    assert any("items: +15 records" in line for line in log) and any("completed" in line for line in log)
    assert page.locator("#cancel").is_hidden()
    # The end shows the duration, without a reload: the row's, from the page's last poll after the
    # final message (run.js finish()), which may still be on its way.
    page.wait_for_function("() => document.getElementById('duration').textContent.endsWith(' s')")
    assert page.evaluate("window.__sameDocument") is True
    created = page.locator("[data-ago]").first.text_content()
    page.wait_for_function("(before) => document.querySelector('[data-ago]').textContent !== before", arg=created)
    page.screenshot(path=os.path.join(OUTPUT, f"run-{backend}.png"), full_page=True)

    # A second run, cancelled from its page while it runs.
    page.goto(live_server.url + "/admin/")
    _card(page, "slow").locator('button:has-text("Sync now")').click()
    page.wait_for_url("**/admin/runs/*")
    run_id = int(page.url.rsplit("/", 1)[-1])
    page.wait_for_function("() => Number(document.getElementById('processed').textContent) > 0")
    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    page.click('button:has-text("Cancel run")')
    page.wait_for_function("() => document.getElementById('run').dataset.status === 'cancelled'")
    assert questions == [f"Cancel run #{run_id}? Records written so far are kept."]
    assert page.locator("#run-status").text_content().strip() == "cancelled"
    page.screenshot(path=os.path.join(OUTPUT, f"run-cancelled-{backend}.png"), full_page=True)

    def settled():
        db.session.expire_all()
        return db.session.get(Run, run_id).status == "cancelled"

    wait_for(settled, timeout=10, message="the cancelled row")
    assert 0 < db.session.get(Run, run_id).processed < 5000

    # On a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    for path, name in (("/admin/", "dashboard-phone"), (f"/admin/runs/{run_id}", "run-phone")):
        page.goto(live_server.url + path)
        assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 390, path
        page.screenshot(path=os.path.join(OUTPUT, f"{name}-{backend}.png"), full_page=True)
    assert not console_errors, console_errors
    context.close()


@one_backend
def test_a_second_sync_during_a_running_one_waits_on_its_page_then_runs_by_itself(
        app, browser, live_server, admin_user, make_connection, workers):
    backend = app.config["SQLALCHEMY_DATABASE_URI"].split(":", 1)[0].split("+")[0]
    make_connection(name="busy", settings={"records": 200, "page_size": 10, "latency_ms": 100})
    workers.start()
    page = browser_login(browser, live_server, admin_user)
    page.set_default_timeout(60_000)

    _card(page, "busy").locator('button:has-text("Sync now")').click()
    page.wait_for_url("**/admin/runs/*")
    first = int(page.url.rsplit("/", 1)[-1])
    page.wait_for_function("() => document.getElementById('run').dataset.status === 'running'")

    page.goto(live_server.url + "/admin/")
    card = _card(page, "busy")
    card.locator('select[name="mode"]').select_option("range")
    card.locator('input[name="since"]').fill("2026-01-01")
    card.locator('button:has-text("Sync now")').click()
    page.wait_for_url("**/admin/runs/*")
    second = int(page.url.rsplit("/", 1)[-1])
    assert second != first
    assert f"busy is busy with run {first}" in page.text_content("body")
    assert page.locator("#run-status").text_content().strip() == "waiting"
    assert page.text_content("#waiting").strip() == f"waiting for run {first} of this connection to end"
    page.screenshot(path=os.path.join(OUTPUT, f"run-waiting-{backend}.png"), full_page=True)

    page.goto(live_server.url + "/admin/")
    assert f"#{second}" in _card(page, "busy").locator("p.active").all_text_contents()[-1]
    page.screenshot(path=os.path.join(OUTPUT, f"dashboard-waiting-{backend}.png"), full_page=True)

    # The follow-up's page, left open: it starts by itself once the first run ends, and completes.
    page.goto(live_server.url + f"/admin/runs/{second}")
    page.wait_for_function("() => document.getElementById('run').dataset.status === 'completed'", timeout=90_000)
    assert page.locator("#waiting").is_hidden()
    page.screenshot(path=os.path.join(OUTPUT, f"run-follow-up-completed-{backend}.png"), full_page=True)
    page.context.close()
