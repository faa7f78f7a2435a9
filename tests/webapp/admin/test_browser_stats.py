"""The statistics page and a connection's report as a person sees them (Debian's Chromium,
gunicorn), over a generated history: eight charts, and the numbers in the tables equal what
the database says, counted here with plain SQL; the percentiles, read from the roll-ups'
histograms, within their stated error, which the page states (issue 18). Screenshots in test-output/."""
import os

import pytest
from sqlalchemy import text

from tests.browser import OUTPUT, chromium
from tests.stats_history import generate
from tests.webapp.admin.support import browser_login, one_backend
from webapp import rollups, stats
from webapp.models import utcnow


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def _count(sql, **params):
    from webapp.extensions import db

    return db.session.execute(text(sql), params).scalar()


def db_durations(in_window, bounds):
    from webapp.extensions import db

    seconds = ("EXTRACT(EPOCH FROM (finished_at - started_at))" if db.engine.dialect.name == "postgresql"
               else "(julianday(finished_at) - julianday(started_at)) * 86400")
    return db.session.execute(text(f"SELECT {seconds} FROM runs WHERE status IN ('completed', 'failed') "  # noqa: S608  the SQL is this test's constants; values are bound
                                   f"AND {in_window}"), bounds).scalars().all()


@one_backend
def test_statistics_page_shows_charts_and_tables_equal_to_the_database(app, browser, live_server, admin_user,
                                                                      make_connection):
    names = ("crm", "halo", "zoom")
    ids = [make_connection(name=n).id for n in names]
    generate(ids, 3000, utcnow(), days=40)
    page = browser_login(browser, live_server, admin_user)
    page.click('nav a:has-text("Statistics")')
    page.wait_for_url("**/admin/stats")
    page.click('.windows a:has-text("30d")')
    page.wait_for_url("**/admin/stats?window=30d")
    win = stats.window("30d")  # the page's window: whole days, so it is the same a moment later
    assert page.locator("svg.chart").count() == 8
    assert page.locator("svg.chart title").first.text_content() == "Runs by outcome"
    in_window = "created_at >= :since AND created_at < :until"
    bounds = {"since": win.since, "until": win.until}
    total = _count(f"SELECT COUNT(*) FROM runs WHERE {in_window}", **bounds)
    assert total > 1000
    assert int(page.text_content("#total-runs")) == total
    completed = _count(f"SELECT COUNT(*) FROM runs WHERE status = 'completed' AND {in_window}", **bounds)
    failed = _count(f"SELECT COUNT(*) FROM runs WHERE status = 'failed' AND {in_window}", **bounds)
    assert page.text_content("#total-success") == f"{100 * completed / (completed + failed):.1f}%"
    assert int(page.text_content("#total-created")) == _count(f"SELECT SUM(created) FROM runs WHERE {in_window}", **bounds)
    # Each period's row of the outcomes table, against the database.
    rows = page.locator("#table-outcomes tbody tr")
    assert rows.count() == 30
    for i in (0, 17, 29):
        cells = rows.nth(i).locator("td").all_text_contents()
        start = win.starts[i]
        period = {"since": start, "until": start + win.bucket}
        assert int(cells[0]) == _count(f"SELECT COUNT(*) FROM runs WHERE {in_window}", **period)
        assert int(cells[2]) == _count(f"SELECT COUNT(*) FROM runs WHERE status = 'failed' AND {in_window}", **period)
        waits = page.locator("#table-waits tbody tr").nth(i).locator("td").all_text_contents()
        assert float(waits[0]) == round(_count(f"SELECT COALESCE(SUM(rate_limit_wait_seconds), 0) FROM runs "
                                               f"WHERE {in_window}", **period), 1)
    # The median of the whole window, against the exact one of the rows, within the error the page states.
    assert page.text_content("#note-durations") == stats.PERCENTILE_NOTE
    durations = sorted(float(d) for d in db_durations(in_window, bounds))
    exact = durations[(50 * len(durations) + 99) // 100 - 1]
    assert abs(stats.run_stats(win).total.p50 - exact) <= exact * rollups.RELATIVE_ERROR + 0.001
    # Per connection.
    for name, connection_id in zip(names, ids):
        cells = page.locator(f'#table-connections tr[data-connection="{name}"] td').all_text_contents()
        assert int(cells[0]) == _count(f"SELECT COUNT(*) FROM runs WHERE connection_id = :c AND {in_window}",
                                       c=connection_id, **bounds)
    page.screenshot(path=os.path.join(OUTPUT, "stats.png"), full_page=True)

    # The report of one connection, and its CSV.
    page.click('#table-connections tr[data-connection="halo"] a:has-text("report")')
    page.wait_for_url("**/admin/stats/connections/*")
    assert int(page.text_content("#total-runs")) == _count(
        f"SELECT COUNT(*) FROM runs WHERE connection_id = :c AND {in_window}", c=ids[1], **bounds)
    assert page.locator("#recent-runs tbody tr").count() == 50
    with page.expect_download() as download:
        page.click('a:has-text("figures per period")')
    assert download.value.suggested_filename == "synchub-halo-series-30d.csv"
    page.screenshot(path=os.path.join(OUTPUT, "stats-report.png"), full_page=True)

    # On a phone: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(live_server.url + "/admin/stats?window=7d")
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 390
    page.screenshot(path=os.path.join(OUTPUT, "stats-phone.png"), full_page=False)
    page.context.close()
