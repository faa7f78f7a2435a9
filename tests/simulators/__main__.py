"""Run a simulator standalone: python -m tests.simulators records --port 8001 --records 100000

Each simulator is a factory taking its own command-line arguments and returning a WSGI app;
add new providers to SIMULATORS. Every simulator's parser takes the common options
(--host, --port, --latency) too, so `python -m tests.simulators zoom --help` lists all of
its options.
"""
import argparse
import sys

from .harness import RecordsAPI, SimulatorServer, make_records


def _common_options():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1")
    common.add_argument("--port", type=int, default=8001)
    common.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    return common


def _parser(name):
    return argparse.ArgumentParser(prog=f"python -m tests.simulators {name}", parents=[_common_options()])


def records_api(argv):
    parser = _parser("records")
    parser.add_argument("--records", type=int, default=1000, help="how many records to generate")
    parser.add_argument("--page-size-max", type=int, default=1000)
    parser.add_argument("--token", default=None, help="require this bearer token")
    parser.add_argument("--client", action="append", default=[], metavar="ID:SECRET",
                        help="an OAuth2 client for POST /oauth/token (repeatable)")
    parser.add_argument("--rate-limit", default=None, metavar="N/SECONDS", help="e.g. 10/1")
    args = parser.parse_args(argv)
    rate_limit = None
    if args.rate_limit:
        n, seconds = args.rate_limit.split("/")
        rate_limit = (int(n), float(seconds))
    clients = dict(c.split(":", 1) for c in args.client)
    return RecordsAPI(make_records(args.records), page_size_max=args.page_size_max, auth_token=args.token,
                      oauth_clients=clients, rate_limit=rate_limit)


def loops_api(argv):
    from .loops import LoopsAPI

    parser = _parser("loops")
    parser.add_argument("--key", action="append", default=[], metavar="KEY[:TEAM]",
                        help="a valid API key and its team (repeatable; default loops-test-key)")
    parser.add_argument("--rate-limit", default="10/1", metavar="N/SECONDS", help="per team; 'none' for no limit")
    parser.add_argument("--known-property", action="append", default=None, metavar="NAME",
                        help="only these custom contact properties exist (default: any is accepted)")
    args = parser.parse_args(argv)
    keys = {}
    for item in args.key or ["loops-test-key"]:
        key, _, team = item.partition(":")
        keys[key] = team or "Test Team"
    rate_limit = None
    if args.rate_limit != "none":
        n, seconds = args.rate_limit.split("/")
        rate_limit = (int(n), float(seconds))
    return LoopsAPI(keys, rate_limit=rate_limit, known_properties=args.known_property)


def _rate(text):
    if text in (None, "none"):
        return None
    n, seconds = text.split("/")
    return int(n), float(seconds)


def zoom_api(argv):
    from .zoom import ZoomAPI

    parser = _parser("zoom")
    parser.add_argument("--webinars", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--account-id", default="zoom-account")
    parser.add_argument("--client", default="zoom-client:zoom-client-secret", metavar="ID:SECRET")
    parser.add_argument("--webhook-secret", default="zoom-webhook-secret")
    parser.add_argument("--malformed-every", type=int, default=0)
    parser.add_argument("--registrants", type=int, default=3, help="at most this many per webinar")
    parser.add_argument("--participants", type=int, default=3, help="at most this many per past webinar")
    parser.add_argument("--rate-limit", default=None, metavar="N/SECONDS",
                        help="one limit for every category (default: light 30/1, medium 20/1, heavy 10/1)")
    args = parser.parse_args(argv)
    client_id, _, secret = args.client.partition(":")
    rate = _rate(args.rate_limit)
    return ZoomAPI(args.webinars, seed=args.seed, account_id=args.account_id, client_id=client_id,
                   client_secret=secret, webhook_secret=args.webhook_secret, malformed_every=args.malformed_every,
                   registrants=(0, args.registrants), participants=(0, args.participants),
                   rate_limits={c: rate for c in ("light", "medium", "heavy")} if rate else None)


def highlevel_api(argv):
    from .highlevel import HighLevelAPI

    parser = _parser("highlevel")
    parser.add_argument("--orders", type=int, default=150)
    parser.add_argument("--products", type=int, default=5)
    parser.add_argument("--inactive-products", type=int, default=1)
    parser.add_argument("--tickets-per-order", type=int, default=None, help="fix each order's total quantity")
    parser.add_argument("--invalid-every", type=int, default=0, help="every Nth order has only inactive products")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--location-id", default="loc-sim-1")
    parser.add_argument("--token", default="pit-sim-token", help="the private integration token")
    parser.add_argument("--rate-limit", default="100/10", metavar="N/SECONDS", help="per location")
    args = parser.parse_args(argv)
    api = HighLevelAPI(args.orders, args.products, seed=args.seed, location_id=args.location_id,
                       private_token=args.token, rate_limit=_rate(args.rate_limit) or (10**9, 1.0),
                       inactive_products=args.inactive_products, tickets_per_order=args.tickets_per_order,
                       invalid_every=args.invalid_every)
    print(f"webhook public key:\n{api.public_key_pem}", flush=True)
    return api


def halopsa_api(argv):
    from .halopsa import HaloAPI

    parser = _parser("halopsa")
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--client", default="halo-client:halo-client-secret", metavar="ID:SECRET")
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--first-date", default="2023-07-01")
    parser.add_argument("--days", type=int, default=1096, help="tickets are spread over this many days")
    parser.add_argument("--agent-envelope", choices=("list", "object"), default="list")
    parser.add_argument("--malformed-every", type=int, default=0)
    parser.add_argument("--rate-limit", default="500/180", metavar="N/SECONDS")
    args = parser.parse_args(argv)
    client_id, _, secret = args.client.partition(":")
    return HaloAPI(args.tickets, args.agents, seed=args.seed, client_id=client_id, client_secret=secret,
                   tenant=args.tenant, first_date=args.first_date, days=args.days, agent_envelope=args.agent_envelope,
                   malformed_every=args.malformed_every, rate_limit=_rate(args.rate_limit) or (10**9, 1.0))


SIMULATORS = {
    "records": records_api,
    "loops": loops_api,
    "zoom": zoom_api,
    "highlevel": highlevel_api,
    "halopsa": halopsa_api,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m tests.simulators", parents=[_common_options()],
                                     epilog="`python -m tests.simulators NAME --help` lists the options of one.")
    parser.add_argument("simulator", choices=sorted(SIMULATORS))
    if not argv or argv[0] not in SIMULATORS:
        parser.parse_args(argv[:1])  # --help, or the error that names the simulators
    # The simulator's own parser reads everything after its name, the common options included,
    # so its --help lists them all.
    app = SIMULATORS[argv[0]](argv[1:])
    args = _common_options().parse_known_args(argv[1:])[0]
    server = SimulatorServer(app, host=args.host, port=args.port)
    if hasattr(app, "latency"):  # provider simulators add it after admission (tests/simulators/common.py)
        app.latency = args.latency
    else:
        server.faults.latency = args.latency
    print(f"{argv[0]} simulator on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
