"""A web process whose Redis stopped answering does not make every webhook wait for it:
after one failed kick it leaves dispatching to the supervisor's step for a while
(webapp/webhooks/dispatch.py, KICK_AWAY_SECONDS)."""
from tests.conftest import make_app
from tests.support import closing_port
from webapp.webhooks import dispatch


def test_after_a_failed_kick_the_process_does_not_ask_redis_again_for_a_while(tmp_path):
    listener, accepted = closing_port()
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
