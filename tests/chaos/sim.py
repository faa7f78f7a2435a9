"""The records simulator as its own process, with a control surface for the chaos harness:

    python -m tests.chaos.sim --port N --records 300 --rate-limit 20/1 --state-file PATH

GET  /_chaos/stats   {"violations", "requests"}: rate-limit overruns seen by the provider
GET  /_chaos/items   the provider's truth (outside the rate limit, unlike GET /items)
POST /_chaos/fault   {"status": 429|503|401, "times": N, "retry_after": 1}: the next N /items answers;
                     {"clear": true} drops the faults still queued
POST /_chaos/mutate  {"upsert": [records], "delete": [ids]}
The dataset is saved to --state-file on every change, so a restarted simulator (the
provider outage scenario) serves the same data it served before it went away.
"""
import argparse
import json
import os

from werkzeug.wrappers import Request, Response

from tests.simulators.harness import RecordsAPI, SimulatorServer, make_records


class ChaosRecords:
    def __init__(self, api, state_file):
        self.api = api
        self.state_file = state_file
        self.server = None

    def save(self):
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.api.records(), f)
        os.replace(tmp, self.state_file)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_chaos/"):
            return self.api(environ, start_response)
        request = Request(environ)
        if path == "/_chaos/stats":
            body = {"violations": self.api.violations,
                    "requests": len(self.server.log.entries("/items")) if self.server else None}
        elif path == "/_chaos/items":
            body = self.api.records()
        elif path == "/_chaos/fault" and request.method == "POST":
            spec = request.get_json()
            if spec.get("clear"):
                self.server.faults.clear()
            elif int(spec["status"]) == 429:
                self.server.faults.rate_limit(retry_after=spec.get("retry_after", 1), times=int(spec["times"]),
                                              path="/items")
            else:
                self.server.faults.status(int(spec["status"]), times=int(spec["times"]), path="/items")
            body = {"pending": self.server.faults.pending()}
        elif path == "/_chaos/mutate" and request.method == "POST":
            spec = request.get_json()
            for record in spec.get("upsert", []):
                self.api.upsert(record)
            for record_id in spec.get("delete", []):
                self.api.delete(record_id)
            self.save()
            body = {"records": len(self.api.records())}
        else:
            body, status = {"message": "unknown control path"}, 404
            return Response(json.dumps(body), status, content_type="application/json")(environ, start_response)
        return Response(json.dumps(body), 200, content_type="application/json")(environ, start_response)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.sim")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--rate-limit", default="20/1")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--state-file", required=True)
    args = parser.parse_args(argv)
    if os.path.exists(args.state_file):
        with open(args.state_file) as f:
            records = json.load(f)
    else:
        records = make_records(args.records)
    n, seconds = args.rate_limit.split("/")
    app = ChaosRecords(RecordsAPI(records, rate_limit=(int(n), float(seconds))), args.state_file)
    app.save()
    server = SimulatorServer(app, host=args.host, port=args.port)
    app.server = server
    server.faults.latency = args.latency
    print(f"chaos records simulator on {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
