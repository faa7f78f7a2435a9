"""A run's live progress never holds its pages for long when Redis stops answering: snapshots go
through a short-timeout twin of the client, and after a failure the publisher stays quiet for a
while (webapp/progress.py; docs/RELIABILITY.md, "Partitions")."""
import redis

from tests.conftest import make_app
from tests.support import closing_port
from webapp import progress


def test_after_a_failed_publish_the_run_does_not_ask_redis_again_for_a_while(tmp_path):
    listener, accepted = closing_port()
    try:
        app = make_app(f"sqlite:///{tmp_path / 'p.db'}", "redis://127.0.0.1:1/0", str(tmp_path))
        main = redis.Redis(host="127.0.0.1", port=listener.getsockname()[1], socket_timeout=10)
        with app.app_context():
            publisher = progress.ProgressPublisher(main, run_id=7)
        twin = publisher.client.connection_pool.connection_kwargs
        assert twin["socket_timeout"] == progress.PUBLISH_TIMEOUT_SECONDS == twin["socket_connect_timeout"]
        assert publisher.publish({"status": "running"})["run_id"] == 7  # the run goes on
        asked = len(accepted)
        assert asked >= 1
        for _ in range(5):
            publisher.publish({"status": "running"})
        assert len(accepted) == asked  # quiet: nobody asked the broken Redis again
        publisher._failed_at -= progress.QUIET_AFTER_FAILURE_SECONDS  # the while has passed
        publisher.publish({"status": "running"})
        assert len(accepted) > asked
    finally:
        listener.close()
