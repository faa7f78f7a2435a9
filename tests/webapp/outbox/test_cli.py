"""`flask outbox drain|list|retry|discard`, run through Flask's CLI runner."""
from tests.webapp.outbox.support import FAST, loops, loops_connection  # noqa: F401  (fixture)
from webapp import outbox
from webapp.extensions import db
from webapp.models import OutboxEvent


def _vote(voter):
    return outbox.publish(db.session, "vote_cast", f"vote-{voter}", {"voter": {"email": f"{voter}@example.com"}}).ids


def test_drain_sends_inline_and_reports_counts(app, make_connection, loops):
    app.config.update(FAST)
    loops_connection(make_connection, loops)
    _vote("carol"), _vote("dave")
    db.session.commit()
    result = app.test_cli_runner().invoke(args=["outbox", "drain"])
    assert result.exit_code == 0, result.output
    assert "claimed 2, done 2" in result.output
    assert "outbox: pending 0, processing 0, done 2, dead 0" in result.output
    assert loops.api.contact("dave@example.com")["userGroup"] == "Voters"


def test_list_retry_and_discard_dead_events(app, make_connection, loops):
    app.config.update(FAST)
    loops.api.known_properties = set()
    loops_connection(make_connection, loops, mappings={"vote_cast": [
        {"action": "upsert_contact", "email": "{voter.email}", "properties": {"votedFor": "{choice}"}}]})
    for voter in ("carol", "dave", "erin"):
        outbox.publish(db.session, "vote_cast", f"vote-{voter}", {"voter": {"email": f"{voter}@example.com"},
                                                                  "choice": "Bob"})
    db.session.commit()
    runner = app.test_cli_runner()
    runner.invoke(args=["outbox", "drain"])
    listing = runner.invoke(args=["outbox", "list", "--status", "dead"])
    assert "dead 3" in listing.output
    assert listing.output.count("last error: PUT http://127.0.0.1") == 3
    assert "Contact property 'votedFor' does not exist" in listing.output

    erin = db.session.query(OutboxEvent).filter_by(key="erin@example.com").one().id
    discarded = runner.invoke(args=["outbox", "discard", str(erin)], input="y\n")
    assert discarded.exit_code == 0 and "1 event(s) discarded" in discarded.output
    loops.api.define_property("votedFor")
    retried = runner.invoke(args=["outbox", "retry", "--all-dead"])
    assert "2 event(s) queued for delivery" in retried.output
    runner.invoke(args=["outbox", "drain"])
    assert "done 2, dead 0" in runner.invoke(args=["outbox", "list"]).output
    assert loops.api.contact("erin@example.com") is None
    refused = runner.invoke(args=["outbox", "retry"])
    assert refused.exit_code == 1 and "give event ids, or --all-dead" in refused.output
