"""After runs that failed on a bug and on a bad stored setting, no admin page shows a Python
exception class: errors are sentences, the class is in the worker's log (issue 18)."""
import re

from webapp.extensions import db
from webapp.models import Run

# CamelCase names ending like exception classes (ValueError, KeyError, SyncError, ...).
EXCEPTION_CLASS = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b|Traceback")


def _failed_runs(app, make_connection, redis):
    from webapp import runs
    from worker.engine import execute_run

    demo = make_connection(name="demo", settings={"records": 20})
    # A record id the sandbox cannot read: int("abc") inside the connector, a bug.
    bug = runs.trigger(demo, mode="record", record_key="items:item-abc", params={"record_id": "item-abc"},
                       trigger="manual", enqueue=False).run
    assert execute_run(bug.id, redis_client=redis, worker_name="test") == "failed"
    # A setting stored by hand, around the form: refused by the declaration, in words.
    lots = make_connection(name="lots", settings={"records": "lots"})
    typed = runs.trigger(lots, enqueue=False).run
    assert execute_run(typed.id, redis_client=redis, worker_name="test") == "failed"
    db.session.expire_all()
    return demo, lots, db.session.get(Run, bug.id), db.session.get(Run, typed.id)


def test_failed_runs_are_explained_in_words(app, make_connection, redis):
    _, _, bug, typed = _failed_runs(app, make_connection, redis)
    assert bug.error_class == "internal"
    assert bug.error_message.startswith("The run stopped on an unexpected error (a value has an unexpected form)")
    assert f"search for run {bug.id}" in bug.error_message
    assert typed.error_class == "config"
    assert typed.error_message == "settings need fixing: records must be a whole number from 0 to 10000000"
    for run in (bug, typed):
        assert not EXCEPTION_CLASS.search(run.error_message), run.error_message


def test_every_admin_page_after_a_failed_run_is_free_of_exception_classes(app, client, make_connection, redis):
    demo, lots, bug, typed = _failed_runs(app, make_connection, redis)
    ids = {"run_id": bug.id, "connection_id": demo.id}
    pages = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or "GET" not in rule.methods or rule.endpoint == "admin.static":
            continue
        if rule.endpoint in ("admin.logout", "admin.login") or rule.rule.endswith("/live"):
            continue  # the live page is a websocket; its messages are the progress.json state checked below
        if not set(rule.arguments) <= set(ids):
            continue  # pages keyed by something else (a delivery, an event) have no failed run to show
        pages.append(rule.rule.replace("<int:run_id>", str(ids["run_id"]))
                     .replace("<int:connection_id>", str(ids["connection_id"])))
    pages += [f"/admin/runs/{typed.id}", f"/admin/connections/{lots.id}/edit", f"/admin/runs/{typed.id}/progress.json",
              "/admin/connections/new?connector=sandbox", f"/admin/runs?connection={demo.id}&status=failed"]
    assert "/admin/" in pages and f"/admin/runs/{bug.id}" in pages and len(pages) >= 10, pages
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, (page, response.status_code)
        body = response.get_data(as_text=True)
        found = EXCEPTION_CLASS.search(body)
        assert not found, f"{page} shows {found.group(0)!r}"
    run_page = client.get(f"/admin/runs/{bug.id}").get_data(as_text=True)
    assert "An unexpected error: The run stopped on an unexpected error" in run_page
    assert "A setting needs fixing: settings need fixing: records must be a whole number" in client.get(
        f"/admin/runs/{typed.id}").get_data(as_text=True)
