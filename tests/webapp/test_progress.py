"""webapp/progress.py: the live progress channel in Redis."""
import json

import redis as redis_lib

from webapp import progress

RUN_ID = 987654321  # far above any run id a test session makes, so no other session's run shares it


def _url_with_database(client, database):
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{database}"


def test_an_install_on_another_redis_database_is_not_heard_on_this_ones_channel(app, redis):
    """Two installs sharing one Redis server by database number, same prefix, both with a run
    RUN_ID: Pub/Sub ignores database numbers, so only the channel's name keeps them apart."""
    here = progress.database_of(redis)
    other = redis_lib.Redis.from_url(_url_with_database(redis, (here + 1) % 16))
    assert progress.database_of(other) != here
    listener = redis.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(progress.channel_pattern(here))
    assert listener.get_message(timeout=5) is None  # the subscription is in place
    try:
        progress.ProgressPublisher(other, RUN_ID, ttl=5).publish({"status": "from-the-other-install"})
        progress.ProgressPublisher(redis, RUN_ID, ttl=5).publish({"status": "from-this-install"})
        heard = []
        while not heard or heard[-1] != "from-this-install":  # Redis delivers in publish order
            message = listener.get_message(timeout=30)
            assert message is not None, f"this install's own message never came; heard {heard}"
            heard.append(json.loads(message["data"])["status"])
        assert heard == ["from-this-install"]
        assert json.loads(redis.get(progress.snapshot_key(RUN_ID)))["status"] == "from-this-install"
    finally:
        listener.close()
        other.delete(progress.snapshot_key(RUN_ID))
        other.close()
