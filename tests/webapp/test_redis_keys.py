"""Every key an install writes to Redis carries its prefix (webapp/redis_keys.py), so two
installs on one Redis never read or take each other's keys."""
import pytest

from tests.webapp.admin.support import new_client
from webapp import metrics, outbox, redis_keys, runs
from webapp.extensions import db
from worker.engine import execute_run


@pytest.fixture
def acme(app):
    app.config["REDIS_PREFIX"] = "acme-test"
    metrics.init_app(app)
    yield app
    app.config["REDIS_PREFIX"] = "synchub"
    metrics.init_app(app)


def test_a_sync_a_supervisor_tick_a_login_brake_and_a_webhook_refusal_write_only_prefixed_keys(
        acme, redis, make_connection):
    from scheduler.supervisor import Supervisor

    redis.flushdb()
    run = runs.trigger(make_connection(name="demo", settings={"records": 30, "page_size": 10})).run
    execute_run(run.id, redis_client=redis, worker_name="t")  # progress, metrics
    metrics.flush()
    Supervisor(acme, name="s1").tick()  # leader lease, heartbeat
    client = new_client(acme)
    page = client.get("/admin/login")
    assert page.status_code == 200
    from tests.webapp.admin.support import csrf_token

    client.post("/admin/login", data={"email": "nobody@example.com", "password": "wrong",
                                      "csrf_token": csrf_token(page.get_data(as_text=True))})  # login brake
    assert client.post("/webhooks/no-such-connection", data=b"{}").status_code == 415  # counted as rejected
    outbox.enqueue_drain()  # outbox marker and an RQ job

    keys = sorted(k.decode() for k in redis.keys("*"))
    ours = [k for k in keys if k.startswith("acme-test:")]
    rq_keys = [k for k in keys if k.startswith("rq:")]
    assert set(ours) | set(rq_keys) == set(keys), "every key is ours or RQ's"
    for expected in ("acme-test:metrics", "acme-test:supervisors:leader", "acme-test:supervisors:heartbeat:s1",
                     f"acme-test:progress:{run.id}", "acme-test:outbox:drain-job", "acme-test:webhooks:rejected"):
        assert expected in ours, expected
    assert any(k.startswith("acme-test:login-failures:") for k in ours)
    # RQ's own keys name our queues and jobs, which carry the prefix.
    assert all("acme-test" in k for k in rq_keys if k.startswith(("rq:job:", "rq:queue:"))), rq_keys


def test_a_prefix_that_rq_cannot_carry_is_refused_with_a_sentence(app):
    app.config["REDIS_PREFIX"] = "acme prod"
    try:
        with pytest.raises(ValueError, match="may hold only letters, digits"):
            redis_keys.key("metrics")
    finally:
        app.config["REDIS_PREFIX"] = "synchub"
