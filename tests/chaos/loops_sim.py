"""The Loops simulator as its own process, with what the chaos invariants read:

    python -m tests.chaos.loops_sim --port N --rate-limit 10/1

GET  /_chaos/sequences   {email: [idempotency keys in the order they took effect]}
GET  /_chaos/duplicates  [[email, key]] effects that took place twice (see LoopsAPI)
POST /_chaos/outage      {"status": 503} answers everything with it; {"status": null} ends it
GET  /_simulator/stats   requests and rate-limit violations (LoopsAPI's own)
"""
import argparse
import json

from werkzeug.wrappers import Request, Response

from tests.simulators.harness import SimulatorServer
from tests.simulators.loops import LoopsAPI


class ChaosLoops:
    def __init__(self, api):
        self.api = api

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_chaos/"):
            return self.api(environ, start_response)
        if path == "/_chaos/sequences":
            body = {c["email"]: self.api.sequence(c["email"]) for c in self.api.contacts()}
        elif path == "/_chaos/duplicates":
            body = self.api.duplicate_effects()
        elif path == "/_chaos/outage":
            self.api.outage = Request(environ).get_json().get("status")
            body = {"outage": self.api.outage}
        else:
            return Response('{"message": "unknown control path"}', 404)(environ, start_response)
        return Response(json.dumps(body), 200, content_type="application/json")(environ, start_response)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.loops_sim")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rate-limit", default="10/1")
    args = parser.parse_args(argv)
    n, seconds = args.rate_limit.split("/")
    # keep_alive: LoopsAPI.keep_alive, which ChaosLoops does not forward (tests/simulators/harness.py).
    server = SimulatorServer(ChaosLoops(LoopsAPI(rate_limit=(int(n), float(seconds)))), host=args.host, port=args.port,
                             keep_alive=True)
    print(f"chaos Loops simulator on {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
