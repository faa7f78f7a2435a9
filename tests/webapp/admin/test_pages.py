"""Dashboard, Sync now, connection forms, run page, history and health, through the real
app with a logged-in test client."""
import re
from datetime import timedelta

from tests.webapp.admin.support import csrf_token

SECRET = "sk_live_TOPSECRET_4242"


def _post(client, url, data, page="/admin/"):
    data = dict(data, csrf_token=csrf_token(client.get(page).get_data(as_text=True)))
    return client.post(url, data=data)


def _runs():
    from webapp.extensions import db
    from webapp.models import Run

    db.session.expire_all()
    return db.session.query(Run).order_by(Run.id).all()


def test_dashboard_shows_each_connection_with_health_last_run_and_next_run(client, make_connection):
    from webapp import runs
    from webapp.extensions import db
    from webapp.models import utcnow

    quiet = make_connection(name="quiet", schedule="every:30")
    quiet.next_run_at = utcnow() + timedelta(minutes=20)
    busy = make_connection(name="busy")
    busy.health, busy.health_message = "needs_reauth", "the provider rejected the credentials (401)"
    db.session.commit()
    run = runs.trigger(busy, requested_by="tester", enqueue=False).run
    html = client.get("/admin/").get_data(as_text=True)
    quiet_card = html[html.index('id="connection-%d"' % quiet.id):]
    quiet_card = quiet_card[:quiet_card.index("</article>")]
    assert "never" in quiet_card and "every 30 minutes" in quiet_card and "in 20 min" in quiet_card
    busy_card = html[html.index('id="connection-%d"' % busy.id):]
    busy_card = busy_card[:busy_card.index("</article>")]
    assert "needs reauth" in busy_card and "rejected the credentials" in busy_card
    assert f'href="/admin/runs/{run.id}"' in busy_card and "status-queued" in busy_card
    assert "manual only" in busy_card


def test_sync_now_starts_a_run_and_shows_its_page(client, make_connection, admin_user):
    connection = make_connection(name="demo", settings={"records": 10})
    response = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "incremental"})
    [run] = _runs()
    assert response.headers["Location"] == f"/admin/runs/{run.id}"
    assert (run.mode, run.trigger, run.requested_by, run.status) == ("incremental", "manual", admin_user, "queued")
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert f"Run #{run.id}" in page and "demo" in page and "waiting for a worker" in page


def test_the_same_sync_while_active_goes_to_the_active_run(client, make_connection):
    connection = make_connection(name="demo")
    first = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "full"})
    second = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "full"})
    assert second.headers["Location"] == first.headers["Location"]
    assert len(_runs()) == 1
    page = client.get(second.headers["Location"]).get_data(as_text=True)
    assert "already has run" in page


def test_another_sync_while_active_waits_and_the_pages_say_for_what(client, make_connection):
    connection = make_connection(name="demo")
    first = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "full"})
    second = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "range", "since": "2026-01-01"})
    assert second.headers["Location"] != first.headers["Location"]
    assert [run.status for run in _runs()] == ["queued", "waiting"]
    page = client.get(second.headers["Location"]).get_data(as_text=True)
    first_id = first.headers["Location"].rsplit("/", 1)[1]
    assert f"is busy with run {first_id}" in page and "status-waiting" in page
    assert f"waiting for run {first_id} of this connection to end" in page
    dashboard = client.get("/admin/").get_data(as_text=True)
    assert "Then: " in dashboard and "since=2026-01-01" in dashboard


def test_date_range_sync_passes_its_bounds_and_a_refused_one_keeps_the_choice(client, make_connection):
    connection = make_connection(name="demo")
    bad = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "range"})
    assert bad.headers["Location"].startswith("/admin/?") and _runs() == []
    assert "needs a start date, an end date, or both" in client.get("/admin/").get_data(as_text=True)
    backwards = _post(client, f"/admin/connections/{connection.id}/sync",
                      {"mode": "range", "since": "2026-03-01", "until": "2026-02-01"})
    assert _runs() == []
    again = client.get(backwards.headers["Location"]).get_data(as_text=True)
    assert "the start date 2026-03-01 must be before the end date 2026-02-01" in again
    card = _card(again, connection)  # the form comes back as it was filled in, not reset to full
    assert '<option value="range" selected>' in card and 'value="2026-03-01"' in card
    _post(client, f"/admin/connections/{connection.id}/sync",
          {"mode": "range", "since": "2026-01-01", "until": "2026-02-01"})
    [run] = _runs()
    assert run.mode == "range" and run.params == {"since": "2026-01-01", "until": "2026-02-01"}


def test_sync_now_offers_full_range_and_fiscal_year_as_one_choice(client, make_connection):
    connection = make_connection(name="halo", connector="halopsa", settings={
        "base_url": "https://halo.example.com", "fiscal_years": [2024, 2026, 2025]})
    card = _card(client.get("/admin/").get_data(as_text=True), connection)
    choices = re.findall(r'<option value="(\w+)"[^>]*>([^<]+)</option>',
                         re.search(r'<select name="mode"[^>]*>(.*?)</select>', card, re.S).group(1))
    assert choices == [("full", "all tickets (full)"), ("incremental", "new and changed (incremental)"),
                       ("range", "date range"), ("fiscal_year", "fiscal year")]
    select = re.search(r'<select name="fiscal_year">(.*?)</select>', card, re.S).group(1)
    assert re.findall(r'<option value="(\d+)">', select) == ["2026", "2025", "2024"]
    sync = f"/admin/connections/{connection.id}/sync"
    # All tickets: the form also sends a fiscal year and dates, and the choice says to ignore them.
    _post(client, sync, {"mode": "full", "fiscal_year": "2025", "since": "2025-01-01"})
    full = _runs()[-1]
    assert (full.mode, full.params) == ("full", {})
    from webapp import runs
    runs.cancel(full.id, requested_by="test")
    _post(client, sync, {"mode": "fiscal_year", "fiscal_year": "2025", "since": "2025-01-01"})
    year = _runs()[-1]
    assert (year.mode, year.params) == ("range", {"fiscal_year": 2025})
    runs.cancel(year.id, requested_by="test")
    refused = _post(client, sync, {"mode": "fiscal_year", "fiscal_year": "1999"})
    assert refused.headers["Location"].startswith("/admin/?") and len(_runs()) == 2
    assert "the fiscal year 1999 is not one of this connection&#39;s: 2024, 2025, 2026" in client.get(
        refused.headers["Location"]).get_data(as_text=True)


def test_connection_is_created_from_the_connector_fields(client):
    from webapp.models import Connection

    html = client.get("/admin/connections/new?connector=rest").get_data(as_text=True)
    assert 'name="setting.base_url"' in html and 'name="credential.api_key"' in html
    response = _post(client, "/admin/connections/new", {
        "connector": "rest", "name": "crm", "setting.base_url": "https://api.example.com",
        "setting.rate_limit": "[5, 1]", "setting.streams": '{"contacts": {"path": "/contacts"}}',
        "extra_settings": '{"fiscal_years": [2025]}', "credential.api_key": SECRET,
        "schedule": "hourly:15", "enabled": "1"}, page="/admin/connections/new?connector=rest")
    assert response.status_code == 302
    connection = Connection.query.filter_by(name="crm").one()
    assert connection.settings == {"base_url": "https://api.example.com", "rate_limit": [5, 1],
                                   "streams": {"contacts": {"path": "/contacts"}}, "fiscal_years": [2025]}
    assert connection.credentials == {"api_key": SECRET}
    assert SECRET not in connection.credentials_encrypted
    assert (connection.schedule, connection.enabled) == ("hourly:15", True)
    assert connection.next_run_at is not None and connection.next_run_at.minute == 15


def test_blank_credential_keeps_the_stored_one_and_clear_removes_it(client, make_connection):
    from webapp.extensions import db

    connection = make_connection(name="crm", connector="rest", credentials={"api_key": SECRET, "token": "tok-1"},
                                 settings={"base_url": "https://api.example.com"})
    edit = f"/admin/connections/{connection.id}/edit"
    html = client.get(edit).get_data(as_text=True)
    assert SECRET not in html and "tok-1" not in html and "stored · leave blank to keep" in html
    assert f"http://localhost/webhooks/{connection.id}</code>" in html  # the URL to paste into the provider
    _post(client, edit, {"name": "crm", "setting.base_url": "https://api.example.com", "credential.api_key": "",
                         "credential.token": "tok-2", "schedule": "manual"}, page=edit)
    db.session.expire_all()
    assert connection.credentials == {"api_key": SECRET, "token": "tok-2"}
    _post(client, edit, {"name": "crm", "setting.base_url": "https://api.example.com", "clear.api_key": "1",
                         "schedule": "manual"}, page=edit)
    db.session.expire_all()
    assert connection.credentials == {"token": "tok-2"}
    assert connection.enabled is False  # the unticked checkbox


def test_invalid_connection_form_says_what_to_fix_and_saves_nothing(client, make_connection):
    from webapp.extensions import db

    connection = make_connection(name="demo", settings={"records": 5})
    edit = f"/admin/connections/{connection.id}/edit"
    for data, message in (
        ({"name": "demo", "schedule": "every:0"}, "minutes must be between 1 and"),
        ({"name": "demo", "schedule": "weekly"}, "unknown schedule"),
        ({"name": "", "schedule": "manual"}, "a name of 1 to 100 characters"),
        ({"name": "demo", "extra_settings": "[1, 2"}, "not valid JSON"),
    ):
        response = _post(client, edit, dict(data, **{"setting.records": "7"}), page=edit)
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    make_connection(name="other")
    response = _post(client, edit, {"name": "Other", "schedule": "manual"}, page=edit)
    assert "already named" in response.get_data(as_text=True)
    db.session.expire_all()
    assert connection.settings == {"records": 5} and connection.name == "demo"


def _card(html, connection):
    card = html[html.index('id="connection-%d"' % connection.id):]
    return card[:card.index("</article>")]


def _policy_fields(html):
    """(the checked trigger_policy radio, the ticked triggers) of a connection form."""
    policy = re.search(r'name="trigger_policy" value="(\w+)" checked', html).group(1)
    return policy, re.findall(r'name="triggers" value="(\w+)" checked', html)


def test_trigger_policy_is_shown_in_words_and_saved_with_the_form(client, make_connection):
    from webapp.extensions import db

    connection = make_connection(name="zoom", schedule="manual", settings={"records": 5})
    edit = f"/admin/connections/{connection.id}/edit"
    assert _policy_fields(client.get(edit).get_data(as_text=True)) == ("default", ["manual", "api"])
    assert ("manual (admin and CLI), API (the default for a manual-only connection)"
            in _card(client.get("/admin/").get_data(as_text=True), connection))

    form = {"name": "zoom", "schedule": "manual", "enabled": "1", "setting.records": "5",
            "extra_settings": '{"allowed_triggers": ["event"]}',  # the policy's own fields win
            "trigger_policy": "custom", "triggers": ["webhook", "manual"]}
    assert _post(client, edit, form, page=edit).status_code == 302
    db.session.expire_all()
    assert connection.settings == {"records": 5, "allowed_triggers": ["manual", "webhook"]}
    html = client.get(edit).get_data(as_text=True)
    assert _policy_fields(html) == ("custom", ["manual", "webhook"])
    assert "allowed_triggers" not in re.search(r"<textarea[^>]*>(.*?)</textarea>", html, re.S).group(1)
    card = _card(client.get("/admin/").get_data(as_text=True), connection)
    assert "manual (admin and CLI), webhook</dd>" in card and "Sync now</button>" in card

    # Without manual: no Sync now button, and a forged Sync now is refused with the reason.
    _post(client, edit, dict(form, triggers=["webhook"]), page=edit)
    card = _card(client.get("/admin/").get_data(as_text=True), connection)
    assert "Sync now</button>" not in card and "Sync now is off" in card
    refused = _post(client, f"/admin/connections/{connection.id}/sync", {"mode": "full"})
    assert refused.headers["Location"].startswith("/admin/?") and _runs() == []
    assert "manual (admin and CLI) triggers are off for connection" in client.get("/admin/").get_data(as_text=True)

    # A form without the policy's fields keeps it; choosing the default removes it.
    _post(client, edit, {k: v for k, v in form.items() if k not in ("trigger_policy", "triggers")}, page=edit)
    db.session.expire_all()
    assert connection.settings["allowed_triggers"] == ["webhook"]
    _post(client, edit, dict(form, trigger_policy="default"), page=edit)
    db.session.expire_all()
    assert connection.settings == {"records": 5}


def test_a_policy_without_schedule_leaves_a_scheduled_connection_no_next_run(client, make_connection):
    from webapp.extensions import db
    from webapp.schedules import firing

    connection = make_connection(name="hourly", schedule="hourly:0")
    firing.plan_next_runs()
    db.session.expire_all()
    assert connection.next_run_at is not None
    edit = f"/admin/connections/{connection.id}/edit"
    assert _policy_fields(client.get(edit).get_data(as_text=True)) == (
        "default", ["manual", "schedule", "webhook", "event", "api"])
    _post(client, edit, {"name": "hourly", "schedule": "hourly:0", "enabled": "1", "trigger_policy": "custom",
                         "triggers": ["manual", "event"]}, page=edit)
    db.session.expire_all()
    assert connection.next_run_at is None
    firing.plan_next_runs()  # the supervisor's planner agrees
    db.session.expire_all()
    assert connection.next_run_at is None
    assert "none: the trigger policy takes no schedule" in _card(client.get("/admin/").get_data(as_text=True), connection)


def test_loops_connection_with_a_malformed_mapping_is_refused_with_the_reason(client, make_connection):
    from webapp.extensions import db
    from webapp.models import Connection

    page = "/admin/connections/new?connector=loops"
    form = {"connector": "loops", "name": "loops", "schedule": "manual", "enabled": "1", "credential.api_key": "k"}
    for mappings, message in (
        ('{"vote_cast": [{"action": "send_email", "email": "{voter.email}"}]}',
         "mappings[&#39;vote_cast&#39;] rule 1: action must be one of upsert_contact, send_event"),
        ('{"vote_cast": [{"action": "upsert_contact", "email": "{voter.email}", "colour": "red"}]}',
         "mappings[&#39;vote_cast&#39;] rule 1: unknown field(s) colour"),
        ('["not", "an", "object"]', "mappings must be an object of event type -&gt; list of rules"),
    ):
        response = _post(client, "/admin/connections/new", dict(form, **{"setting.mappings": mappings}), page=page)
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    assert db.session.query(Connection).filter_by(name="loops").count() == 0
    good = '{"vote_cast": [{"action": "upsert_contact", "email": "{voter.email}"}]}'
    assert _post(client, "/admin/connections/new", dict(form, **{"setting.mappings": good}), page=page).status_code == 302
    saved = db.session.query(Connection).filter_by(name="loops").one()
    edit = f"/admin/connections/{saved.id}/edit"
    response = _post(client, edit, dict(form, **{"setting.mappings": '{"vote_cast": "upsert"}'}), page=edit)
    assert response.status_code == 400 and "must be a list of rule objects" in response.get_data(as_text=True)
    db.session.expire_all()
    assert saved.settings["mappings"] == {"vote_cast": [{"action": "upsert_contact", "email": "{voter.email}"}]}


def test_credentials_never_appear_in_any_page(client, make_connection):
    from webapp import runs
    from webapp.extensions import db

    connection = make_connection(name="crm", connector="rest", credentials={"api_key": SECRET, "password": SECRET + "pw"},
                                 settings={"base_url": "https://api.example.com"})
    run = runs.trigger(connection, enqueue=False).run
    runs.log_event(run.id, "a line", commit=True)
    token = connection.credentials_encrypted
    urls = ["/admin/", "/admin/runs", "/admin/health", f"/admin/runs/{run.id}", f"/admin/runs/{run.id}/progress.json",
            f"/admin/connections/{connection.id}/edit", "/admin/connections/new?connector=rest"]
    for url in urls:
        body = client.get(url).get_data(as_text=True)
        assert SECRET not in body and token not in body, url
    # Also when the form comes back with an error: the typed secret is not echoed.
    edit = f"/admin/connections/{connection.id}/edit"
    response = _post(client, edit, {"name": "", "credential.api_key": "sk_new_SECRET_9"}, page=edit)
    assert response.status_code == 400 and "sk_new_SECRET_9" not in response.get_data(as_text=True)
    db.session.expire_all()
    assert connection.credentials["api_key"] == SECRET


def test_script_in_a_connection_name_is_shown_escaped(client, make_connection):
    from webapp import runs

    evil = "<script>alert(1)</script>"
    connection = make_connection(name=evil, settings={"fiscal_years": [evil]})
    run = runs.trigger(connection, requested_by=evil, enqueue=False).run
    runs.log_event(run.id, evil, kind="record_error", record_key=evil, commit=True)
    for url in ("/admin/", "/admin/runs", f"/admin/runs/{run.id}", f"/admin/connections/{connection.id}/edit"):
        body = client.get(url).get_data(as_text=True)
        assert evil not in body, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body, url


def test_run_page_shows_record_errors_activity_and_cancel(client, make_connection):
    from webapp import runs

    connection = make_connection(name="demo")
    run = runs.trigger(connection, enqueue=False).run
    runs.log_event(run.id, "missing primary key 'id'", kind="record_error", level="warning", stream="items",
                   record_key="item-7", commit=True)
    html = client.get(f"/admin/runs/{run.id}").get_data(as_text=True)
    assert "queued by manual" in html
    errors = html[html.index('id="record-errors"'):]
    assert "item-7" in errors and "missing primary key" in errors and "(1)" in html
    response = _post(client, f"/admin/runs/{run.id}/cancel", {}, page=f"/admin/runs/{run.id}")
    assert response.headers["Location"] == f"/admin/runs/{run.id}"
    assert _runs()[0].status == "cancelled"
    html = client.get(f"/admin/runs/{run.id}").get_data(as_text=True)
    assert "status-cancelled" in html and 'id="cancel"' not in html


def test_history_filters_and_pages_newest_first(client, make_connection):
    from webapp.admin.runs import PAGE_SIZE
    from webapp.extensions import db
    from webapp.models import Run, utcnow

    a, b = make_connection(name="alpha"), make_connection(name="beta")
    now = utcnow()
    for i in range(PAGE_SIZE + 5):
        db.session.add(Run(connection_id=a.id, mode="full", trigger="schedule", status="completed",
                           created_at=now - timedelta(days=3)))
    db.session.add(Run(connection_id=b.id, mode="full", trigger="api", status="failed", created_at=now))
    db.session.commit()
    ids = lambda html: [int(i) for i in re.findall(r'href="/admin/runs/(\d+)">#', html)]  # noqa: E731
    first = client.get("/admin/runs").get_data(as_text=True)
    assert len(ids(first)) == PAGE_SIZE and ids(first) == sorted(ids(first), reverse=True)
    assert 'rel="next"' in first
    second = client.get("/admin/runs?page=2").get_data(as_text=True)
    assert len(ids(second)) == 6 and max(ids(second)) < min(ids(first))
    failed = client.get(f"/admin/runs?status=failed&connection={b.id}").get_data(as_text=True)
    assert len(ids(failed)) == 1 and "beta" in failed
    assert len(ids(client.get("/admin/runs?trigger=api").get_data(as_text=True))) == 1
    day = (now - timedelta(days=3)).strftime("%Y-%m-%d")
    assert len(ids(client.get(f"/admin/runs?since={day}&until={day}").get_data(as_text=True))) == PAGE_SIZE
    filtered_next = client.get(f"/admin/runs?trigger=schedule").get_data(as_text=True)
    assert "trigger=schedule" in re.search(r'<a rel="next" href="([^"]+)"', filtered_next).group(1)
    assert client.get("/admin/runs?since=yesterday").status_code == 400


def test_health_page_lists_supervisors_stale_runs_and_alerts(client, make_connection):
    from webapp.extensions import db
    from webapp.models import Alert, Run, SupervisorState, utcnow

    now = utcnow()
    connection = make_connection(name="demo")
    db.session.add_all([
        SupervisorState(name="sup-a", hostname="host-a", pid=11, is_leader=True, last_tick_at=now),
        SupervisorState(name="sup-b", hostname="host-b", pid=12, is_leader=False, last_tick_at=now - timedelta(hours=1)),
        Run(connection_id=connection.id, status="running", attempt=1, heartbeat_at=now - timedelta(minutes=5),
            worker_name="w-gone"),
        Alert(kind="consecutive_failures", subject="demo", message="3 failed runs in a row"),
        Alert(kind="stale_runs", subject="", message="old", cleared_at=now),
    ])
    db.session.commit()
    html = client.get("/admin/health").get_data(as_text=True)
    assert "Leader: <strong>sup-a</strong>" in html
    assert re.search(r'<tr class="problem"><td>sup-b</td>.*?\(silent\)', html, re.S)
    stale = html[html.index('id="stale-runs"'):]
    assert "w-gone" in stale[:stale.index("</table>")]
    alerts = html[html.index('id="alerts"'):]
    alerts = alerts[:alerts.index("</table>")]
    assert "3 failed runs in a row" in alerts and "old" not in alerts
    assert "No worker is running" in html


def test_typed_settings_are_checked_all_at_once_and_nothing_is_saved(client, make_connection):
    from webapp.extensions import db

    connection = make_connection(name="demo", settings={"records": 5})
    edit = f"/admin/connections/{connection.id}/edit"
    html = client.get(edit).get_data(as_text=True)
    # Faults are folded away in their own box, after the real settings.
    assert html.index('name="setting.records"') < html.index("Test-only fault injection") < html.index(
        'name="setting.fail_at_offset"')
    assert 'inputmode="numeric"' in html and "how many records the stream has" in html
    response = _post(client, edit, {"name": "demo", "schedule": "every:0", "setting.records": "lots",
                                    "setting.page_size": "0", "setting.auth_fail": "maybe"}, page=edit)
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "Nothing was saved: 4 fields need fixing" in body
    assert "records must be a whole number from 0 to 10000000" in body
    assert "page_size must be a whole number from 1 to 10000" in body
    assert "auth_fail must be yes or no" in body and "minutes must be between 1 and" in body
    assert 'value="lots"' in body  # what was typed comes back to be corrected
    db.session.expire_all()
    assert connection.settings == {"records": 5}
    ok = _post(client, edit, {"name": "demo", "schedule": "manual", "setting.records": "7",
                              "setting.auth_fail": "true", "setting.bad_every": ""}, page=edit)
    assert ok.status_code == 302
    db.session.expire_all()
    assert connection.settings == {"records": 7, "auth_fail": True}


def test_missing_pages_are_styled_inside_the_layout(client):
    for url in ("/admin/runs/999999", "/admin/connections/999999/edit", "/admin/stats?connection=999999",
                "/admin/no-such-page"):
        response = client.get(url)
        body = response.get_data(as_text=True)
        assert response.status_code == 404, url
        assert 'class="top"' in body and "Statistics</a>" in body and "Not found" in body, url
    assert "there is no connection 999999" in client.get("/admin/stats?connection=999999").get_data(as_text=True)
    api = client.get("/api/no-such-thing")
    assert api.status_code == 404 and api.get_json()["error"] == "not_found"  # the API keeps its JSON


def test_run_page_shows_progress_per_stream(client, make_connection, redis):
    from webapp import runs
    from webapp.progress import ProgressPublisher

    connection = make_connection(name="zoom-like")
    run = runs.trigger(connection, enqueue=False).run
    ProgressPublisher(redis, run.id).publish({"status": "running", "phase": "fetching registrants", "processed": 130,
                                              "total": 100, "percent": 50.0, "streams": [
                                                  {"name": "webinars", "processed": 100, "total": 100, "done": True},
                                                  {"name": "registrants", "processed": 30, "total": None, "done": False},
                                                  {"name": "participants", "processed": 0, "total": None, "done": False}]})
    html = client.get(f"/admin/runs/{run.id}").get_data(as_text=True)
    table = html[html.index('<table id="streams"'):html.index("</table>", html.index('<table id="streams"'))]
    assert " hidden" not in table.split(">", 1)[0]
    rows = re.findall(r'<tr data-stream="(\w+)"><th scope="row">\w+</th><td>(\d+)</td><td>([^<]+)</td><td>([^<]+)</td>', table)
    assert rows == [("webinars", "100", "100", "done"), ("registrants", "30", "?", "reading"),
                    ("participants", "0", "?", "waiting")]
    assert '<span id="percent" class="big">50.0%</span>' in html
