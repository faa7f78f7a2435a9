"""SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS: a PostgreSQL server that stops answering (a network
partition drops packets) is given up on in bounded time, on our side and on the server's
(docs/RELIABILITY.md, "Partitions"; the partition scenarios of tests/chaos exercise it end to end)."""
import os
import socket
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa

from webapp.config import Config, database_connect_args

POSTGRES = os.environ.get("SYNCHUB_TEST_POSTGRES_URL")


def test_postgres_connections_get_the_bounds_and_sqlite_none(tmp_path):
    pg = Config(str(tmp_path), environ={"DATABASE_URL": "postgres://u@db.example/synchub"}).as_dict()
    args = pg["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"]
    assert args["connect_timeout"] == 30 and args["tcp_user_timeout"] == 30_000 and args["keepalives"] == 1
    assert "-c tcp_keepalives_idle=10" in args["options"]
    off = Config(str(tmp_path), environ={"DATABASE_URL": "postgresql://u@db.example/synchub",
                                         "SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS": "0"}).as_dict()
    assert "connect_args" not in off["SQLALCHEMY_ENGINE_OPTIONS"]
    sqlite = Config(str(tmp_path), environ={}).as_dict()
    assert "connect_args" not in sqlite["SQLALCHEMY_ENGINE_OPTIONS"]


@pytest.mark.skipif(not POSTGRES, reason="needs PostgreSQL: SYNCHUB_TEST_POSTGRES_URL is unset")
def test_the_server_side_of_each_session_probes_a_silent_client():
    url = "postgresql+psycopg://" + POSTGRES.split("://", 1)[1]
    engine = sa.create_engine(url, **database_connect_args(url, 30))
    try:
        with engine.connect() as conn:
            shown = {name: conn.execute(sa.text(f"SHOW {name}")).scalar()
                     for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                                  "tcp_user_timeout")}
            params = conn.connection.dbapi_connection.info.get_parameters()
    finally:
        engine.dispose()
    assert shown == {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "4",
                     "tcp_user_timeout": "30000"}
    assert params["tcp_user_timeout"] == "30000" and params["keepalives_idle"] == "10"


def test_a_server_that_accepts_and_never_answers_is_given_up_on():
    """Without a connect timeout libpq waits for the server's first answer forever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    url = f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/synchub"
    args = database_connect_args(url, 2)["connect_args"]
    started = time.monotonic()
    try:
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, **args)
        assert time.monotonic() - started < 30  # bounded (2 s asked for), not forever
        assert accepted  # it did reach the silent server
    finally:
        listener.close()
