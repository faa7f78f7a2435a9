"""/healthz, /readyz and the admin health page, with a real worker and a Redis that stops."""
from rq import Worker

from tests.support import RedisServer, wait_for
from tests.webapp.admin.support import admin_user, client, new_client  # noqa: F401  (fixtures)


def test_healthz_and_readyz_answer_without_login(app):
    anonymous = new_client(app)
    assert anonymous.get("/healthz").get_json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}, "open_issues": {}}


def test_readyz_and_health_page_report_a_stopped_redis(app, client):
    server = RedisServer().start()
    try:
        # Point this app at its own Redis, which the test can stop.
        app.extensions["synchub_redis"] = {"client": None, "url": server.url}
        assert new_client(app).get("/readyz").status_code == 200
        server.stop()
        ready = new_client(app).get("/readyz")
        assert ready.status_code == 503
        body = ready.get_json()
        assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
        assert body["checks"]["redis"].startswith("error: ")
        page = client.get("/admin/health")
        assert page.status_code == 200
        assert "Workers and queues cannot be read" in page.get_data(as_text=True)
    finally:
        server.stop()


def test_health_page_lists_running_workers_with_heartbeat_and_queue_lengths(app, client, workers, redis,
                                                                            make_connection):
    from webapp import runs
    from webapp.models import Run

    runs.trigger(make_connection(name="demo", settings={"records": 5}))  # no worker yet: it waits
    html = client.get("/admin/health").get_data(as_text=True)
    assert "No worker is running" in html
    table = html[html.index('id="queues"'):]
    assert "<dt>default</dt><dd>1 job(s) waiting</dd>" in table
    assert Run.query.count() == 1
    workers.start(name="health-page-worker")
    wait_for(lambda: any(w.name == "health-page-worker" for w in Worker.all(connection=redis)), timeout=20,
             message="the second worker to register")
    html = client.get("/admin/health").get_data(as_text=True)
    rows = html[html.index('id="workers"'):html.index('id="queues"')]
    assert "health-page-worker" in rows and "default" in rows and " ago</td>" in rows
