"""How long a webhook delivery's INSERT waits for SQLite's write lock while another process
keeps taking it, as the dispatcher does: the delivery writer's own retry loop
(webapp/webhooks/delivery_writer.py `_sqlite_execute`: busy_timeout 0, retries after 0.2,
0.4 ... 2 ms) next to SQLite's own busy handler (the busy_timeout every connection gets:
it sleeps 1, 2, 5, 10 ... 100 ms between tries), in alternating trials of the same run.

    .venv/bin/python -m bench.sqlite_lock_wait [--hold-ms 3] [--gap-ms 4] [--trials 4] [--seconds 3]

The lock holder, in its own process, loops: BEGIN IMMEDIATE, 20 inserted rows, --hold-ms
asleep holding the lock, COMMIT, then 0 to --gap-ms asleep. The writer inserts one row
every 2 ms and times each statement until it is committed.
"""
import argparse
import multiprocessing
import os
import random
import sqlite3
import tempfile
import time

from webapp.webhooks.delivery_writer import _sqlite_execute as own_loop


def sqlites_busy_handler(cursor, sql, params, dbapi):
    """The same statement left to the connection's busy_timeout."""
    cursor.execute("PRAGMA wal_autocheckpoint = 0")
    cursor.execute(sql, params)
    return cursor.fetchall()


def _connect(path):
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA busy_timeout=30000")  # what every connection gets (webapp/extensions.py)
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _hold_the_lock(path, stop, hold_ms, gap_ms):
    connection = _connect(path)
    while not stop.is_set():
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("INSERT INTO runs (a) VALUES (?)", [("x" * 200,)] * 20)
        time.sleep(hold_ms / 1000)
        connection.execute("COMMIT")
        time.sleep(random.uniform(0, gap_ms) / 1000)


def _trial(path, execute, seconds):
    """Sorted latencies (ms) of one-row INSERTs, one every 2 ms for `seconds`."""
    connection = _connect(path)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        cursor = connection.cursor()
        before = time.perf_counter()
        execute(cursor, "INSERT INTO deliveries (a) VALUES (?) RETURNING id", ("y" * 300,), sqlite3)
        latencies.append((time.perf_counter() - before) * 1000)
        cursor.close()
        time.sleep(0.002)
    connection.close()
    return sorted(latencies)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.sqlite_lock_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold-ms", type=float, default=3.0, help="how long the other process holds the lock")
    parser.add_argument("--gap-ms", type=float, default=4.0, help="at most this long between its transactions")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one trial")
    args = parser.parse_args()

    path = os.path.join(tempfile.mkdtemp(prefix="synchub-lock-"), "bench.db")
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, a TEXT)")
    setup.execute("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, a TEXT)")
    setup.close()
    stop = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_the_lock, args=(path, stop, args.hold_ms, args.gap_ms))
    holder.start()
    results = {"own retry loop": [], "SQLite's handler": []}
    try:
        for _ in range(args.trials):
            for name, execute in (("own retry loop", own_loop), ("SQLite's handler", sqlites_busy_handler)):
                results[name].append(_trial(path, execute, args.seconds))
    finally:
        stop.set()
        holder.join()
    print(f"SQLite write-lock wait, lock held {args.hold_ms:g} ms a transaction, 0-{args.gap_ms:g} ms between "
          f"(per trial of {args.seconds:g} s)")
    for name, trials in results.items():
        p50 = " ".join(f"{t[len(t) // 2]:5.2f}" for t in trials)
        p99 = " ".join(f"{t[int(len(t) * 0.99)]:6.1f}" for t in trials)
        print(f"  {name:17s} p50 {p50} ms   p99 {p99} ms   inserts {sum(len(t) for t in trials)}")


if __name__ == "__main__":
    main()
