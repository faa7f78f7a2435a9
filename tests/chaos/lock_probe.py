"""python -m tests.chaos.lock_probe [--timeouts 0,5] [--give-up 60]: what a worker cut off by a
partition in the middle of a transaction does to everyone else (docs/RELIABILITY.md, bug 7).

A client on a network host (tests/chaos/netns.py) opens a transaction on a throwaway cluster,
updates a row (so it holds the row's lock, as the engine does between a page's UPDATE of its
run and the COMMIT), and is then cut off: every packet dropped. From the root namespace another
session (the supervisor's sweep) updates the same row; the probe measures how long it waits.
The server cannot tell a silent client from a slow one: without keepalives on its side of the
session it waits for the operating system's (2 h + 9 x 75 s on Linux), holding the lock. With
SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS = T (webapp/config.py database_connect_args) it drops the
session after about T seconds and the lock is freed. Prints one line per timeout."""
import argparse
import signal
import subprocess
import sys
import time

import psycopg

from tests.support import ROOT

from .netns import Network, unavailable_reason
from .pgcluster import PostgresCluster

HOLDER = """
import sys, time, psycopg
from webapp.config import database_connect_args
url, timeout = sys.argv[1], int(sys.argv[2])
conn = psycopg.connect(url, **database_connect_args(url, timeout).get("connect_args", {}))
conn.execute("UPDATE probe SET v = v + 1 WHERE id = 1")
print("locked", flush=True)
time.sleep(3600)
"""


def probe(net, cluster, timeout, give_up):
    host_url = f"postgresql://postgres@{net.gateway}:{cluster.port}/postgres"
    local_url = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    holder = subprocess.Popen(net.run_in("z", [sys.executable, "-c", HOLDER, host_url, str(timeout)]),
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        net.partition("z")
        cut = time.monotonic()
        with psycopg.connect(local_url, autocommit=True) as conn:
            conn.execute(f"SET statement_timeout = '{give_up}s'")
            try:
                conn.execute("UPDATE probe SET v = 0 WHERE id = 1")
                return f"the row lock was freed {time.monotonic() - cut:.1f} s after the cut"
            except psycopg.errors.QueryCanceled:
                return f"still locked {give_up} s after the cut (gave up waiting)"
    finally:
        net.heal("z")
        holder.kill()
        holder.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.lock_probe", description=__doc__)
    parser.add_argument("--timeouts", default="0,5", help="SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS values (0: off)")
    parser.add_argument("--give-up", type=int, default=60)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` cleans up too (as tests/chaos/__main__.py)
    missing = unavailable_reason()
    if missing:
        print(f"cannot make network hosts here: {missing}")
        return 1
    net = Network(["z"]).create()
    cluster = None
    try:
        cluster = PostgresCluster(listen=("127.0.0.1", net.gateway), trusted_network=str(net.subnet)).start()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY, v int)")
            conn.execute("INSERT INTO probe VALUES (1, 0)")
        for timeout in (int(t) for t in args.timeouts.split(",")):
            print(f"SYNCHUB_DB_NETWORK_TIMEOUT_SECONDS={timeout}: {probe(net, cluster, timeout, args.give_up)}",
                  flush=True)
    finally:
        if cluster:
            cluster.destroy()
        net.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
