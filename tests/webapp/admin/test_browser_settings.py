"""Typed settings, Test connection and the Sync now choice as a person meets them: Debian's
Chromium against gunicorn, a HaloPSA simulator on 127.0.0.1 (issue 18). Screenshots go to
test-output/."""
import os
import uuid

import pytest

from tests.browser import OUTPUT, chromium
from tests.simulators.halopsa import HaloAPI
from tests.webapp.admin.support import browser_login, one_backend


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def _shot(page, name):
    page.screenshot(path=os.path.join(OUTPUT, f"{name}.png"), full_page=True)


@one_backend
def test_typed_form_refuses_a_bad_number_beside_the_field_and_saves_nothing(app, browser, live_server, admin_user,
                                                                            make_connection):
    from webapp.extensions import db

    connection = make_connection(name="demo", settings={"records": 50})
    page = browser_login(browser, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/connections/{connection.id}/edit")
    assert page.locator("details.faults").get_attribute("open") is None  # faults folded away
    assert not page.locator('[name="setting.fail_at_offset"]').is_visible()
    page.fill('[name="setting.records"]', "lots")
    page.fill('[name="setting.page_size"]', "0")
    page.click('button:has-text("Save")')
    page.wait_for_selector(".field-error")
    errors = page.locator(".field-error").all_text_contents()
    assert errors == ["records must be a whole number from 0 to 10000000", "page_size must be a whole number from 1 to 10000"]
    assert page.locator('[name="setting.records"]').get_attribute("aria-invalid") == "true"
    assert page.input_value('[name="setting.records"]') == "lots"
    assert "Nothing was saved: 2 fields need fixing" in page.text_content(".flash-error")
    _shot(page, "settings-form-refused")
    db.session.expire_all()
    assert connection.settings == {"records": 50}
    page.fill('[name="setting.records"]', "75")
    page.fill('[name="setting.page_size"]', "")
    page.click('button:has-text("Save")')
    page.wait_for_url(live_server.url + "/admin/")
    db.session.expire_all()
    assert connection.settings == {"records": 75}
    page.context.close()


@pytest.fixture
def halo(serve):
    api = HaloAPI(tickets=40, agents=3, first_date="2024-07-01", days=700)
    api.server = serve(api)
    return api


@one_backend
def test_test_connection_shows_what_came_back_and_a_401_in_words(app, browser, live_server, admin_user,
                                                               make_connection, halo):
    from webapp.extensions import db
    from webapp.models import Record, Run

    settings = {"base_url": halo.server.url, "rate_limit_key": f"probe-{uuid.uuid4().hex}"}
    good = make_connection(name="halo", connector="halopsa", settings=settings,
                           credentials={"client_id": "halo-client", "client_secret": "halo-client-secret"})
    bad = make_connection(name="halo-wrong", connector="halopsa", settings=settings,
                          credentials={"client_id": "halo-client", "client_secret": "wrong-secret"})
    page = browser_login(browser, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/connections/{good.id}/edit")
    page.click('button:has-text("Test connection")')
    page.wait_for_selector("#probe-result")
    assert page.text_content("#probe-result") == "Connected: every stream answered."
    row = page.locator('tr[data-stream="tickets"]')
    assert "40 records of 40" in row.text_content() or "40 records" in row.text_content()
    assert "dateoccurred" in row.text_content()
    assert "3 records of 3" in page.locator('tr[data-stream="agents"]').text_content()
    _shot(page, "test-connection-ok")
    page.goto(f"{live_server.url}/admin/connections/{bad.id}/edit")
    page.click('button:has-text("Test connection")')
    page.wait_for_selector("#probe-result")
    text = page.text_content("#probe-result")
    assert text.startswith("The provider refused the credentials") and "401" in text, text
    assert "wrong-secret" not in page.content()
    _shot(page, "test-connection-401")
    db.session.expire_all()
    assert db.session.query(Run).count() == 0 and db.session.query(Record).count() == 0
    page.context.close()


@one_backend
def test_sync_now_on_halopsa_is_one_choice_of_all_tickets_range_or_fiscal_year(app, browser, live_server, admin_user,
                                                                             make_connection):
    from webapp import runs
    from webapp.extensions import db
    from webapp.models import Run

    connection = make_connection(name="halo", connector="halopsa", settings={
        "base_url": "http://127.0.0.1:9", "fiscal_years": [2025, 2026]})
    page = browser_login(browser, live_server, admin_user)
    card = page.locator('article.connection[data-name="halo"]')
    mode = card.locator('select[name="mode"]')
    assert mode.locator("option").all_text_contents() == [
        "all tickets (full)", "new and changed (incremental)", "date range", "fiscal year"]
    # Only the inputs of the chosen kind are shown.
    assert not card.locator('input[name="since"]').is_visible() and not card.locator('select[name="fiscal_year"]').is_visible()
    mode.select_option("fiscal_year")
    assert card.locator('select[name="fiscal_year"]').is_visible() and not card.locator('input[name="since"]').is_visible()
    _shot(page, "sync-now-fiscal-year")

    def started():
        page.wait_for_url("**/admin/runs/*")
        db.session.expire_all()
        run = db.session.get(Run, int(page.url.rsplit("/", 1)[-1]))
        runs.cancel(run.id, requested_by="test")  # no worker here: make room for the next one
        return run

    card.locator('select[name="fiscal_year"]').select_option("2025")
    card.locator('button:has-text("Sync now")').click()
    run = started()
    assert (run.mode, run.params) == ("range", {"fiscal_year": 2025})

    page.goto(live_server.url + "/admin/")
    mode.select_option("range")
    card.locator('input[name="since"]').fill("2025-03-01")
    card.locator('input[name="until"]').fill("2025-02-01")
    card.locator('button:has-text("Sync now")').click()
    page.wait_for_selector(".flash-error")
    assert "the start date 2025-03-01 must be before the end date 2025-02-01" in page.text_content(".flash-error")
    assert mode.input_value() == "range" and card.locator('input[name="since"]').input_value() == "2025-03-01"
    _shot(page, "sync-now-range-refused")
    card.locator('input[name="since"]').fill("2025-01-01")
    card.locator('button:has-text("Sync now")').click()
    run = started()
    assert (run.mode, run.params) == ("range", {"since": "2025-01-01", "until": "2025-02-01"})

    page.goto(live_server.url + "/admin/")
    mode.select_option("full")
    card.locator('button:has-text("Sync now")').click()
    run = started()
    assert (run.mode, run.params) == ("full", {})  # all tickets: the one run that detects deletions
    assert db.session.query(Run).count() == 3
    page.context.close()
