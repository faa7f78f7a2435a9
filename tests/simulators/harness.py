"""Local HTTP simulators for tests and benchmarks: real sockets on 127.0.0.1, no mocks.

    api = RecordsAPI(make_records(1000), auth_token="t0k")
    with SimulatorServer(api) as server:
        server.faults.rate_limit(retry_after=1)        # the next request gets 429
        server.faults.status(503, times=2)             # the two after that 503
        ... point a client at server.url ...
        arrivals = [r.time for r in server.log.entries()]

SimulatorServer runs any WSGI app in a threaded werkzeug server and puts a fault layer and a
request log in front of it. Werkzeug's server closes every connection after one answer
(`Connection: close`); an API whose real service keeps HTTP/1.1 connections alive, as HTTP/1.1
does by default, sets `keep_alive = True` on its app (or the caller passes keep_alive=True) and
is served by a small keep-alive server instead (_KeepAliveServer), so a client pays a TCP
connect per connection, not per request, as it does against the real service. RecordsAPI is a generic paged JSON API with auth, filters, its
own rate limit enforcement and a mutable dataset.
"""
import base64
import collections
import http.server
import io
import json
import math
import secrets
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from urllib.parse import unquote

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


# -- server, faults, log ----------------------------------------------------------------


@dataclass
class LoggedRequest:
    time: float  # time.monotonic() on arrival, comparable with the client's clock
    wall: float  # time.time() on arrival, for HTTP-date Retry-After checks
    method: str
    path: str
    query: str
    args: dict  # first value of each query parameter
    headers: dict
    body: bytes
    fault: str | None = None  # the fault applied, if any
    status: int | None = None  # the status sent (None: connection dropped)


class RequestLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._entries = []

    def add(self, entry):
        with self._lock:
            self._entries.append(entry)

    def entries(self, path=None):
        with self._lock:
            return [e for e in self._entries if path is None or e.path.startswith(path)]

    def clear(self):
        with self._lock:
            self._entries.clear()

    def __len__(self):
        with self._lock:
            return len(self._entries)


@dataclass
class _Fault:
    kind: str  # status | delay | drop
    times: int
    path: str | None
    status: int = 0
    body: object = None
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0


class FaultPlan:
    """A script of faults for the next matching requests, applied in the order queued.

    `path` restricts a fault to paths starting with it. `latency` delays every request.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._faults = []
        self.latency = 0.0

    def status(self, code, body=None, headers=None, times=1, path=None):
        self._add(_Fault("status", times, path, status=code, body=body, headers=dict(headers or {})))
        return self

    def rate_limit(self, retry_after=1, times=1, path=None):
        """429; retry_after in seconds, or a str sent verbatim (an HTTP-date), or None."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return self.status(429, {"message": "rate limit exceeded"}, headers, times, path)

    def delay(self, seconds, times=1, path=None):
        """Answer normally but only after `seconds` (client timeouts)."""
        self._add(_Fault("delay", times, path, seconds=seconds))
        return self

    def drop_connection(self, times=1, path=None):
        """Reset the connection without any response."""
        self._add(_Fault("drop", times, path))
        return self

    def clear(self):
        with self._lock:
            self._faults.clear()

    def pending(self):
        with self._lock:
            return sum(f.times for f in self._faults)

    def _add(self, fault):
        if fault.times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append(fault)

    def take(self, path):
        with self._lock:
            for fault in self._faults:
                if fault.path is None or path.startswith(fault.path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None


class _FaultLayer:
    def __init__(self, app, faults, log):
        self.app = app
        self.faults = faults
        self.log = log

    def __call__(self, environ, start_response):
        arrived, wall = time.monotonic(), time.time()
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        query = environ.get("QUERY_STRING", "")
        request = Request(environ)
        entry = LoggedRequest(
            time=arrived, wall=wall, method=environ["REQUEST_METHOD"], path=environ.get("PATH_INFO", ""),
            query=query, args=request.args.to_dict(), headers=dict(request.headers), body=body,
        )
        self.log.add(entry)

        def recording_start_response(status, headers, exc_info=None):
            entry.status = int(status.split(None, 1)[0])
            return start_response(status, headers, exc_info)

        if self.faults.latency:
            time.sleep(self.faults.latency)
        fault = self.faults.take(entry.path)
        if fault is not None:
            entry.fault = fault.kind
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            elif fault.kind == "drop":
                sock = environ["werkzeug.socket"]
                # Linger 0 makes close() send a RST: the client sees a reset, no response.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
                raise ConnectionResetError("simulated dropped connection")  # werkzeug ignores these
            elif fault.kind == "status":
                return _fault_response(fault)(environ, recording_start_response)
        return self.app(environ, recording_start_response)


def _fault_response(fault):
    body = fault.body
    if body is None:
        body = {"message": f"simulated HTTP {fault.status}"}
    if isinstance(body, (dict, list)):
        return Response(json.dumps(body), fault.status, headers=fault.headers, content_type="application/json")
    return Response(body, fault.status, headers=fault.headers, content_type="application/json")


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # thousands of requests per benchmark
        pass


class _KeepAliveHandler(http.server.BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 requests answered one after another on it until the client
    closes it, asks `Connection: close`, or the server stops. Request bodies must come with
    Content-Length (what HTTP clients send for JSON); the whole body is read before the app
    runs, so the next request line is never mistaken for leftover body. Answers are buffered
    and sent with Content-Length."""

    protocol_version = "HTTP/1.1"
    # An answer leaves in one segment, flushed after each request (BaseHTTPRequestHandler),
    # without Nagle's delay: else the client's delayed ACK costs 40 ms a request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.server.opened(self.connection)

    def finish(self):
        self.server.closed(self.connection)
        super().finish()

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, socket.timeout, OSError):
            pass  # the client went away, or a fault dropped the connection

    def log_message(self, format, *args):  # thousands of requests per benchmark
        pass

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._run_wsgi
        raise AttributeError(name)

    def _run_wsgi(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "a request body needs Content-Length here")
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        environ = {
            "REQUEST_METHOD": self.command, "SCRIPT_NAME": "", "PATH_INFO": unquote(path), "QUERY_STRING": query,
            "SERVER_NAME": self.server.server_address[0], "SERVER_PORT": str(self.server.server_address[1]),
            "SERVER_PROTOCOL": self.request_version, "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": self.client_address[1], "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "werkzeug.socket": self.connection,
        }
        if self.headers.get("Content-Type"):
            environ["CONTENT_TYPE"] = self.headers["Content-Type"]
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        started = []

        def start_response(status, headers, exc_info=None):
            started[:] = [status, headers]
            return lambda data: None  # the legacy write(): no app here uses it

        chunks = self.server.app(environ, start_response)
        try:
            payload = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        status, headers = started
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _KeepAliveServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A thread per connection. Stopping it also shuts the open connections, so a stopped
    simulator is an outage for clients holding a kept-alive connection too."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host, port, app):
        self.app = app
        self._connections = set()
        self._connections_lock = threading.Lock()
        super().__init__((host, port), _KeepAliveHandler)

    def opened(self, connection):
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection):
        with self._connections_lock:
            self._connections.discard(connection)

    def server_close(self):
        super().server_close()
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class SimulatorServer:
    """Serve a WSGI app on 127.0.0.1 from a background thread, with faults and a request log.
    `keep_alive` (default: the app's own `keep_alive` attribute, else False): see the module
    docstring."""

    def __init__(self, app, host="127.0.0.1", port=0, keep_alive=None):
        self.app = app
        self.faults = FaultPlan()
        self.log = RequestLog()
        self.keep_alive = getattr(app, "keep_alive", False) if keep_alive is None else keep_alive
        layered = _FaultLayer(app, self.faults, self.log)
        if self.keep_alive:
            self._server = _KeepAliveServer(host, port, layered)
        else:
            self._server = make_server(host, port, layered, threaded=True, request_handler=_QuietHandler)
        self.host = host
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self._thread = None

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                name=f"simulator:{self.port}",
            )
            self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def serve_forever(self):
        """Foreground serving for the standalone entry point."""
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- a generic records API ----------------------------------------------------------------


def make_records(n, start=1, base="2024-01-01T00:00:00Z"):
    """n records with ids start.., names and increasing ISO updated_at (one second apart)."""
    import datetime

    t0 = datetime.datetime.fromisoformat(base.replace("Z", "+00:00"))
    return [
        {
            "id": i,
            "name": f"item {i}",
            "updated_at": (t0 + datetime.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for i in range(start, start + n)
    ]


def _json_response(obj, status=200, headers=None):
    return Response(json.dumps(obj), status, headers=headers, content_type="application/json")


class RecordsAPI:
    """A paged JSON API over a mutable list of records.

    GET /items pages three ways, chosen by the query: `page`+`page_size`, `offset`+`limit`,
    or `page_token` (the `next_page_token` of the previous answer; a first request without
    any of them is page one). `after=<id>` gives keyset paging. Filters on `date_field`:
    `updated_since` (inclusive), `since` (inclusive) and `until` (exclusive); timestamps are
    ISO-8601 strings in one format so they compare as strings. Malformed records (not an
    object, or without the date field) pass every filter. Answer:
    {"items": [...], "total", "page", "page_size", "offset", "next_page_token", "has_more"}.

    GET /items/<id> answers one record. POST /oauth/token issues bearer tokens for
    `oauth_clients` ({client_id: secret}, HTTP Basic or form). With `auth_token` or
    `oauth_clients` set, /items needs a valid bearer token, else 401.

    `rate_limit=(n, seconds)`: more than n requests in any `seconds` window get 429 with
    Retry-After and count in `violations`. Dataset changes are thread-safe.
    """

    def __init__(self, records=(), *, page_size_max=1000, default_page_size=100, auth_token=None,
                 oauth_clients=None, token_ttl=3600, rate_limit=None, records_key="items",
                 date_field="updated_at"):
        self.page_size_max = page_size_max
        self.default_page_size = default_page_size
        self.auth_token = auth_token
        self.oauth_clients = dict(oauth_clients or {})
        self.token_ttl = token_ttl
        self.rate_limit = rate_limit
        self.records_key = records_key
        self.date_field = date_field
        self.reject_all_tokens = False  # every bearer token fails, even fresh ones
        self.violations = 0
        self.token_requests = 0
        self._lock = threading.Lock()
        self._data = {}  # internal key -> (record, its JSON bytes), in listing order
        self._malformed = 0
        self._version = 0
        self._views = {}
        self._issued = {}  # token -> monotonic expiry
        self._arrivals = collections.deque()
        for record in records:
            self._put(record)

    # -- dataset ----------------------------------------------------------------------

    def _put(self, record):
        if isinstance(record, dict) and record.get("id") not in (None, ""):
            key = ("id", str(record["id"]))
        else:
            self._malformed += 1
            key = ("malformed", self._malformed)
        self._data[key] = (record, json.dumps(record, separators=(",", ":")).encode())
        self._version += 1

    def upsert(self, record):
        """Add or replace by id; a replaced record keeps its place in the listing."""
        if not isinstance(record, dict) or record.get("id") in (None, ""):
            raise ValueError("upsert needs a record with an id; use add_malformed for broken ones")
        with self._lock:
            self._put(record)

    def add_malformed(self, obj):
        """Append something that is not a valid record (a list, a string, a dict without id)."""
        with self._lock:
            self._malformed += 1
            self._data[("malformed", self._malformed)] = (obj, json.dumps(obj).encode())
            self._version += 1

    def delete(self, record_id):
        with self._lock:
            self._data.pop(("id", str(record_id)))
            self._version += 1

    def records(self):
        with self._lock:
            return [record for record, _ in self._data.values()]

    def revoke_tokens(self):
        """Invalidate the static token and every issued one (the next request gets 401)."""
        with self._lock:
            self._issued.clear()
            self.auth_token = None if self.auth_token is None else secrets.token_hex(8)

    # -- WSGI -------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        path = request.path.rstrip("/")
        if path == "/oauth/token" and request.method == "POST":
            response = self._token(request)
        elif path == "/items" or path.startswith("/items/"):
            response = self._guarded(request, path)
        else:
            response = _json_response({"message": "not found"}, 404)
        return response(environ, start_response)

    def _guarded(self, request, path):
        if request.method != "GET":
            return _json_response({"message": "method not allowed"}, 405)
        limited = self._check_rate()
        if limited is not None:
            return limited
        if not self._authorized(request):
            return _json_response({"message": "invalid or expired token"}, 401)
        if path == "/items":
            return self._list(request)
        return self._one(path[len("/items/"):])

    def _check_rate(self):
        if self.rate_limit is None:
            return None
        limit, window = self.rate_limit
        with self._lock:
            now = time.monotonic()
            while self._arrivals and self._arrivals[0] <= now - window:
                self._arrivals.popleft()
            if len(self._arrivals) >= limit:
                self.violations += 1
                wait = self._arrivals[0] + window - now
                return _json_response({"message": "rate limit exceeded"}, 429,
                                      {"Retry-After": str(max(1, math.ceil(wait)))})
            self._arrivals.append(now)
        return None

    def _authorized(self, request):
        if self.auth_token is None and not self.oauth_clients:
            return True
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or self.reject_all_tokens:
            return False
        token = header[len("Bearer "):]
        with self._lock:
            if self.auth_token is not None and secrets.compare_digest(token, self.auth_token):
                return True
            expiry = self._issued.get(token)
            return expiry is not None and time.monotonic() < expiry

    def _token(self, request):
        with self._lock:
            self.token_requests += 1
        if request.authorization is not None and request.authorization.type == "basic":
            client_id, secret = request.authorization.username, request.authorization.password
        else:
            client_id, secret = request.form.get("client_id"), request.form.get("client_secret")
        expected = self.oauth_clients.get(client_id)
        if expected is None or secret is None or not secrets.compare_digest(secret, expected):
            return _json_response({"error": "invalid_client", "reason": "bad client credentials"}, 401)
        token = "tok-" + secrets.token_hex(12)
        with self._lock:
            self._issued[token] = time.monotonic() + self.token_ttl
        return _json_response({"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl})

    def _one(self, record_id):
        with self._lock:
            item = self._data.get(("id", record_id))
        if item is None:
            return _json_response({"message": "record not found"}, 404)
        return Response(item[1], 200, content_type="application/json")

    def _view(self, since, until):
        """(list of JSON bytes, list of id strings or None) matching the filters, cached per version."""
        with self._lock:
            cached = self._views.get((since, until))
            if cached is not None and cached[0] == self._version:
                return cached[1], cached[2]
            field_ = self.date_field
            chunks, ids = [], []
            for (kind, key), (record, raw) in self._data.items():
                value = record.get(field_) if isinstance(record, dict) else None
                if isinstance(value, str):
                    if (since is not None and value < since) or (until is not None and value >= until):
                        continue
                chunks.append(raw)
                ids.append(key if kind == "id" else None)
            if len(self._views) > 16:
                self._views.clear()
            self._views[(since, until)] = (self._version, chunks, ids)
            return chunks, ids

    def _list(self, request):
        args = request.args
        try:
            size = int(args.get("page_size") or args.get("limit") or self.default_page_size)
            page = int(args["page"]) if "page" in args else None
            offset = int(args["offset"]) if "offset" in args else None
        except ValueError:
            return _json_response({"message": "page, page_size, offset and limit must be integers"}, 400)
        if size < 1 or (page is not None and page < 1) or (offset is not None and offset < 0):
            return _json_response({"message": "page and page_size must be positive, offset not negative"}, 400)
        size = min(size, self.page_size_max)

        since = args.get("updated_since") or args.get("since")
        if args.get("updated_since") and args.get("since"):
            since = max(args["updated_since"], args["since"])
        chunks, ids = self._view(since, args.get("until"))

        token = args.get("page_token") or args.get("next_page_token")
        if page is not None:
            start = (page - 1) * size
        elif offset is not None:
            start = offset
        elif token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token.encode()))["o"])
            except (ValueError, KeyError, TypeError):
                return _json_response({"message": "invalid page token"}, 400)
        elif "after" in args:
            try:
                start = ids.index(args["after"]) + 1
            except ValueError:
                return _json_response({"message": "unknown 'after' id"}, 400)
        else:
            start = 0

        end = start + size
        has_more = end < len(chunks)
        next_token = base64.urlsafe_b64encode(json.dumps({"o": end}).encode()).decode() if has_more else ""
        meta = json.dumps({
            "total": len(chunks), "page": page if page is not None else start // size + 1, "page_size": size,
            "offset": start, "next_page_token": next_token, "has_more": has_more,
        })
        body = b"".join((
            b'{"', self.records_key.encode(), b'":[', b",".join(chunks[start:end]), b"],", meta[1:].encode(),
        ))
        return Response(body, 200, content_type="application/json")
