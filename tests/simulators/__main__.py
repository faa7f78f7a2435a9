"""Run a simulator standalone: python -m tests.simulators records --port 8001 --records 100000

Each simulator is a factory taking its own command-line arguments and returning a WSGI app;
add new providers to SIMULATORS.
"""
import argparse
import sys

from .harness import RecordsAPI, SimulatorServer, make_records


def records_api(argv):
    parser = argparse.ArgumentParser(prog="python -m tests.simulators records")
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

    parser = argparse.ArgumentParser(prog="python -m tests.simulators loops")
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


SIMULATORS = {
    "records": records_api,
    "loops": loops_api,
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.simulators")
    parser.add_argument("simulator", choices=sorted(SIMULATORS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args, rest = parser.parse_known_args(argv)
    app = SIMULATORS[args.simulator](rest)
    server = SimulatorServer(app, host=args.host, port=args.port)
    server.faults.latency = args.latency
    print(f"{args.simulator} simulator on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
