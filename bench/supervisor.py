"""The supervisor's two costs, each next to a baseline measured in the same run.

    .venv/bin/python -m bench.supervisor [--connections 300] [--backends sqlite,postgresql]
                                         [--rounds 3] [--failovers 3]

Slots: N connections are due at once. Baseline: a bare loop of runs.trigger(trigger=
"schedule") (insert + enqueue, what any caller pays). Supervisor: firing.fire_due(),
which adds the exactly-once bookkeeping (the conditional UPDATE of next_run_at in the
run's transaction, the active-run check). Ratio = baseline seconds / supervisor seconds.

Failover: two real `python -m scheduler` processes (lease TTL 1 s, tick 0.1 s); the
leader is SIGKILLed and the time until the other holds the lease is measured. Baseline:
the floor, a bare Redis key with the same TTL set and polled until it expires.
"""
import argparse
import os
import signal
import tempfile
import time
from datetime import datetime, timedelta

import redis as redis_lib

from bench.common import ThrowawayDatabase
from scheduler.supervisor import heartbeat_key

TTL, TICK = 1.0, 0.1


def measure_slots(app, n, rounds):
    from sqlalchemy import update

    from webapp import runs
    from webapp.schedules import firing
    from webapp.extensions import db
    from webapp.models import CANCELLED, Connection, Run

    conns = [Connection(name=f"bench-{i}", connector="sandbox", settings={}, schedule="every:5") for i in range(n)]
    db.session.add_all(conns)
    db.session.commit()
    ids = [c.id for c in conns]
    slot = datetime(2030, 1, 1)
    best = {"baseline": None, "supervisor": None}

    def settle():  # end every run, so the next round starts with no active run
        db.session.execute(update(Run).where(Run.status == "queued").values(status=CANCELLED))
        db.session.commit()

    for r in range(rounds):
        started = time.perf_counter()
        for connection_id in ids:
            assert runs.trigger(db.session.get(Connection, connection_id), trigger="schedule").created
        baseline = time.perf_counter() - started
        settle()
        due = slot + timedelta(minutes=5 * r)
        db.session.execute(update(Connection).values(next_run_at=due))
        db.session.commit()
        started = time.perf_counter()
        outcomes = firing.fire_due(due)
        supervisor = time.perf_counter() - started
        assert sum(o.action == "enqueued" for o in outcomes) == n, outcomes[:3]
        settle()
        for kind, seconds in (("baseline", baseline), ("supervisor", supervisor)):
            best[kind] = seconds if best[kind] is None else min(best[kind], seconds)
    return best


def measure_failover(app, client, failovers):
    from scheduler.leader import holder
    from tests.scheduler.conftest import SupervisorProcess
    from webapp.extensions import db

    db.engine.dispose()
    settings = dict(SUPERVISOR_TICK_SECONDS=TICK, LEADER_TTL_SECONDS=TTL, SWEEP_INTERVAL_SECONDS=3600,
                    ALERT_INTERVAL_SECONDS=3600, RETENTION_INTERVAL_SECONDS=3600, OUTBOX_DRAIN_INTERVAL_SECONDS=0)
    alive = [SupervisorProcess(app, name=f"bench-sup-{i}", **settings).start() for i in range(2)]
    takeovers, floors = [], []
    try:
        for i in range(failovers):
            _wait(lambda: holder(client) in {p.name for p in alive}, 60)
            leader = next(p for p in alive if p.name == holder(client))
            # Let the follower finish starting up: it must be ticking, not importing.
            _wait(lambda: all(client.exists(heartbeat_key(p.name, "synchub")) for p in alive), 60)
            time.sleep(3 * TICK)
            leader.kill(signal.SIGKILL)
            killed = time.monotonic()
            _wait(lambda: holder(client) not in (None, leader.name), 30, interval=0.005)
            takeovers.append(time.monotonic() - killed)
            leader.proc.wait()
            alive.remove(leader)
            alive.append(SupervisorProcess(app, name=f"bench-sup-{i + 2}", **settings).start())

            key = f"bench:floor:{i}"
            client.set(key, 1, px=int(TTL * 1000))
            started = time.monotonic()
            _wait(lambda: not client.exists(key), 30, interval=0.005)
            floors.append(time.monotonic() - started)
    finally:
        for p in alive:
            p.kill()
            p.proc.wait()
    return takeovers, floors


def _wait(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(interval)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()

    from tests.support import TEST_KEY, RedisServer
    from webapp import create_app

    os.environ["SYNCHUB_LOG_LEVEL"] = "WARNING"  # one INFO line per run would swamp the figures
    redis_server = RedisServer().start()
    workdir = tempfile.mkdtemp(prefix="synchub-bench-")
    client = redis_lib.Redis.from_url(redis_server.url)
    try:
        print(f"{args.connections} connections due at once, best of {args.rounds} rounds\n")
        print(f"{'backend':<11}{'baseline slots/s':>18}{'supervisor slots/s':>20}{'ratio':>8}")
        failover = None
        for backend in args.backends.split(","):
            database = ThrowawayDatabase(backend, workdir)
            try:
                os.environ["SYNCHUB_INSTANCE_PATH"] = tempfile.mkdtemp(dir=workdir)
                app = create_app({"SQLALCHEMY_DATABASE_URI": database.url, "REDIS_URL": redis_server.url,
                                  "SYNCHUB_ENCRYPTION_KEYS": TEST_KEY, "HEARTBEAT_SECONDS": 10,
                                  "STALE_AFTER_SECONDS": 180, "RUN_MAX_ATTEMPTS": 3,
                                  "HTTP_BACKOFF_BASE_SECONDS": 0.5, "HTTP_BACKOFF_MAX_SECONDS": 30})
                with app.app_context():
                    from flask_migrate import upgrade

                    upgrade()
                    best = measure_slots(app, args.connections, args.rounds)
                    n = args.connections
                    print(f"{backend:<11}{n / best['baseline']:>18,.0f}{n / best['supervisor']:>20,.0f}"
                          f"{best['baseline'] / best['supervisor']:>8.2f}", flush=True)
                    if failover is None and args.failovers:
                        failover = measure_failover(app, client, args.failovers)
                    from webapp.extensions import db

                    db.session.remove()
                    db.engine.dispose()
            finally:
                database.drop()
        if failover:
            takeovers, floors = failover
            print(f"\nleader SIGKILLed -> other leads (lease TTL {TTL:g} s, tick {TICK:g} s, "
                  f"{len(takeovers)} failovers; bound TTL + tick = {TTL + TICK:g} s)")
            print(f"{'':<11}{'floor (key expiry) s':>22}{'takeover s':>12}{'ratio':>8}")
            for label, pick in (("best", min), ("worst", max)):
                floor, takeover = pick(floors), pick(takeovers)
                print(f"{label:<11}{floor:>22.3f}{takeover:>12.3f}{floor / takeover:>8.2f}")
    finally:
        redis_server.stop()


if __name__ == "__main__":
    main()
