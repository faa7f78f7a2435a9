"""A declared connector's full sync against the Python connector it ports, same run, same
simulator: HaloPSA tickets (webapp/connectors/halopsa.py vs declared/halopsa_tickets.yaml).

    .venv/bin/python -m bench.declared [--tickets 20000] [--rounds 3] [--backend sqlite|postgresql]

No latency and no rate limit on the simulator, so the figure is the connector's own cost
(paging, selectors, transforms, validation) plus the engine's storing, not the provider's.
The two alternate, round after round and first and second in turn, each on a fresh
connection (every record created).
Issue 21's target: declared records/s within 10 % of Python's (ratio >= 0.90).
"""
import argparse
import tempfile
import uuid

from bench.common import Simulator
from bench.providers import Hub

CREDENTIALS = {"client_id": "halo-client", "client_secret": "halo-client-secret"}


def _settings(connector, url):
    limit = {"rate_limit": [1000000, 1]} if connector == "halopsa" else {"rate_limits": {"default": [1000000, 1]}}
    return {"base_url": url, "rate_limit_key": f"bench-{uuid.uuid4().hex}", **limit}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.declared")
    parser.add_argument("--tickets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--redis-url", default=None, help="default: the bundled redis-server")
    args = parser.parse_args(argv)

    from tests.support import RedisServer

    redis = None if args.redis_url else RedisServer().start()
    hub = Hub(args.backend, tempfile.mkdtemp(prefix="bench-declared-"), args.redis_url or redis.url)
    sim = Simulator("halopsa", "--tickets", str(args.tickets), "--agents", "25", "--rate-limit", "1000000/1")
    print(f"Declared vs Python: HaloPSA full sync of {args.tickets:,} tickets, {args.backend}, {args.rounds} rounds")
    rates = {"halopsa": [], "halopsa_declared": []}
    try:
        for connector in rates:  # warm-up, not counted: imports, first connections, the simulator's caches
            hub.sync(connector, _settings(connector, sim.url), CREDENTIALS, streams=["tickets"])
        for round_no in range(1, args.rounds + 1):
            # Alternate who goes first (the records table grows with every sync), so drift and
            # growth hit both alike.
            order = ("halopsa", "halopsa_declared") if round_no % 2 else ("halopsa_declared", "halopsa")
            for connector in order:
                elapsed, counters = hub.sync(connector, _settings(connector, sim.url), CREDENTIALS, streams=["tickets"])
                assert counters["created"] == args.tickets, counters
                rates[connector].append(counters["created"] / elapsed)
                print(f"  round {round_no} {connector:18} {elapsed:7.2f} s  {rates[connector][-1]:9,.0f} records/s")
    finally:
        sim.stop()
        hub.database.drop()
        if redis:
            redis.stop()
    ratios = [d / p for d, p in zip(rates["halopsa_declared"], rates["halopsa"])]
    whole = sum(rates["halopsa_declared"]) / sum(rates["halopsa"])
    for connector, values in rates.items():
        print(f"  {connector:26} {min(values):9,.0f} - {max(values):,.0f} records/s")
    print(f"  declared/python ratio per round {min(ratios):.3f} - {max(ratios):.3f}, "
          f"of the mean rates {whole:.3f} (target >= 0.90)")
    mean = {connector: sum(values) / len(values) for connector, values in rates.items()}
    print(f"  mean records/s: python {mean['halopsa']:,.0f}, declared {mean['halopsa_declared']:,.0f}")


if __name__ == "__main__":
    main()
