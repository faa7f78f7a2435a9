"""A web process whose Redis stopped answering does not make every webhook wait for it:
after one failed kick it leaves dispatching to the supervisor's step for a while
(webapp/webhooks/dispatch.py, KICK_AWAY_SECONDS)."""
import socket
import threading

from tests.conftest import make_app
from webapp.webhooks import dispatch


def _broken_redis():
    """A port that accepts connections and closes them at once; counts them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return listener, accepted


def test_after_a_failed_kick_the_process_does_not_ask_redis_again_for_a_while(tmp_path):
    listener, accepted = _broken_redis()
    try:
        app = make_app(f"sqlite:///{tmp_path / 'kick.db'}", f"redis://127.0.0.1:{listener.getsockname()[1]}/0",
                       str(tmp_path))
        with app.app_context():
            assert dispatch.kick() is False
            asked = len(accepted)
            assert asked >= 1
            assert [dispatch.kick() for _ in range(5)] == [False] * 5
            assert len(accepted) == asked  # nobody asked the broken Redis again
            state = app.extensions[dispatch.KICK_STATE]
            state["failed_at"] -= dispatch.KICK_AWAY_SECONDS  # the while has passed
            assert dispatch.kick() is False
            assert len(accepted) > asked  # it asks again
    finally:
        listener.close()
