"""Every admin page on a phone (390 px wide, Debian's Chromium): nothing wider than the
screen; wide tables scroll inside their own box. Screenshots in test-output/."""
import os

import pytest

from tests.browser import OUTPUT, chromium
from tests.webapp.admin.support import browser_login, one_backend


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@one_backend
def test_every_admin_page_fits_a_phone(app, browser, live_server, admin_user, make_connection):
    from webapp import runs

    conn = make_connection(name="phone-demo", settings={"records": 10})
    run = runs.trigger(conn, trigger="manual", enqueue=False).run
    runs.cancel(run.id)
    page = browser_login(browser, live_server, admin_user, width=390)
    pages = ["/admin/", "/admin/runs", f"/admin/runs/{run.id}", "/admin/stats", f"/admin/stats/connections/{conn.id}",
             "/admin/webhooks/", "/admin/outbox/", "/admin/issues", "/admin/tokens", "/admin/health",
             f"/admin/connections/{conn.id}/edit", "/admin/connections/new?connector=sandbox", "/admin/no-such-page"]
    too_wide = {}
    for path in pages:
        page.goto(live_server.url + path)
        width = page.evaluate("() => document.scrollingElement.scrollWidth")
        name = path.strip("/").replace("/", "-").replace("?", "-").replace("=", "-") or "dashboard"
        page.screenshot(path=os.path.join(OUTPUT, f"phone-{name}.png"), full_page=True)
        if width > 390:
            too_wide[path] = width
    assert not too_wide, too_wide
    page.context.close()
