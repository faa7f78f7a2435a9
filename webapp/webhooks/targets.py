"""What the webhook endpoint needs to know about a connection, cached per process.

Looking the connection up, pinging the pool and decrypting its secret cost more than the
rest of a delivery's request together (bench/webhook_ingest.py), and a connection's
webhook settings change rarely. So each web process keeps what it read for
WEBHOOK_CONNECTION_CACHE_SECONDS (webapp/config.py). A change made through the ORM in this
process drops the entry at once; another process sees it within that many seconds —
providers that rotate signing keys (Standard Webhooks) send both signatures meanwhile.
Unknown names are never cached: anyone can POST to any URL.
"""
import time
from dataclasses import dataclass

from flask import current_app, has_app_context
from sqlalchemy import event

from .. import runs
from ..connectors import connector_class
from ..connectors.base import Connector, Services
from ..models import Connection

EXTENSION_KEY = "synchub_webhook_targets"
MAX_ENTRIES = 1000
clock = time.monotonic  # tests move it forward instead of sleeping through the cache time


@dataclass(frozen=True)
class Target:
    id: int
    name: str
    connector_name: str
    settings: dict
    connector: Connector

    @property
    def scheme(self):
        return self.connector.webhook_scheme


def lookup(key):
    """The Target for a connection id or name. LookupError when there is no such
    connection; ConfigError when its connector cannot be built."""
    text = str(key)
    # get_connection reads any isdigit() text as an id: "²" or 2**40 must not reach int() or SQL.
    if "\x00" in text or len(text) > 100 or (text.isdigit() and (not text.isascii() or int(text) > 2**31 - 1)):
        raise LookupError(key)
    cache = current_app.extensions.setdefault(EXTENSION_KEY, {})
    ttl = current_app.config["WEBHOOK_CONNECTION_CACHE_SECONDS"]
    entry = cache.get(text)
    now = clock()
    if entry is not None and entry[0] > now:
        return entry[1]
    connection = runs.get_connection(text)
    services = Services(config=current_app.config, connection_id=connection.id)
    connector = connector_class(connection.connector)(connection.settings, connection.credentials, services)
    target = Target(connection.id, connection.name, connection.connector, dict(connection.settings or {}), connector)
    if ttl > 0:
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
        cache[text] = (now + ttl, target)
    return target


@event.listens_for(Connection, "after_update")
@event.listens_for(Connection, "after_delete")
def _forget(_mapper, _connection, target):
    if not has_app_context():
        return
    cache = current_app.extensions.get(EXTENSION_KEY)
    for key, (_expires, cached) in list((cache or {}).items()):
        if cached.id == target.id:  # under its id and under any name it had
            cache.pop(key, None)
