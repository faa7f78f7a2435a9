"""An open-loop HTTP load generator: request i is due at t0 + i/rate, whatever the answers
before it did; its latency is measured from that due time (no coordinated omission).

    .venv/bin/python -m bench.fixed_rate URL --rate 500 --seconds 10 [--requests FILE]

FILE holds one request per line, "webhook-id<TAB>timestamp<TAB>signature<TAB>body" (what
bench.webhook_ingest writes); without it every request is an empty JSON object. Prints one
JSON line: {"sent", "statuses", "p50", "p99", "max"} (milliseconds).

Why not threads and http.client (the first version): at 500/s that cost 30-40% of a core
on the same two cores as the server under test, so "half rate" loaded the machine to
80-90%, and the generator's own lag counted as the server's latency. Here every request's
bytes are built before the clock starts, and one thread sends them on keep-alive
connections with a selector and reads no more of an answer than its status line and
Content-Length: a few percent of a core, close to what wrk costs.
"""
import argparse
import collections
import json
import re
import selectors
import socket
import sys
import time

# Enough that a free connection is always at hand at the rates measured here (at 500/s and
# 40 ms answers, 20 are busy at once); a request that finds none opens another.
CONNECTIONS = 64
ANSWER_TIMEOUT_SECONDS = 30
KEEPALIVE_SECONDS = 1.5
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


def build_requests(host, port, path, rows, total):
    """The bytes of every request, ready to send."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    out = []
    for n in range(total):
        extra, body = "", b"{}"
        if rows:
            msg_id, ts, sig, text = rows[n % len(rows)]
            extra = f"webhook-id: {msg_id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n"
            body = text.encode()
        out.append(f"{head}{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


def _answer_complete(buffer):
    """The status if `buffer` holds a whole answer, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = _CONTENT_LENGTH.search(buffer, 0, end + 2)
    if len(buffer) < end + 4 + (int(length.group(1)) if length else 0):
        return None
    return int(buffer[9:12])


class _Sending:
    """One request in flight on one connection."""

    __slots__ = ("n", "due", "buffer", "resent")

    def __init__(self, n, due):
        self.n, self.due, self.buffer, self.resent = n, due, bytearray(), False


def run(host, port, requests, rate):
    total = len(requests)
    selector = selectors.DefaultSelector()
    idle = collections.deque()

    def connect():
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    def send(sock, sending):
        try:
            sock.sendall(requests[sending.n])  # a request fits the empty socket buffer at once
        except OSError:
            sock.close()
            return False
        selector.register(sock, selectors.EVENT_READ, sending)
        return True

    def start(sending, fresh=False):
        # Most recently used first: those are the connections the server still keeps open.
        # One idle for longer than the server's keep-alive (gunicorn: 2 s) may be closed
        # by now, and is dropped instead of tried.
        now = time.perf_counter()
        while idle and not fresh:
            sock, last_used = idle.pop()
            if now - last_used >= KEEPALIVE_SECONDS:
                sock.close()
            elif send(sock, sending):  # send() closes a connection it could not use
                return
        if not send(connect(), sending):
            raise RuntimeError("cannot send on a new connection")

    for _ in range(CONNECTIONS):
        idle.append((connect(), time.perf_counter() + 1))
    latencies, statuses = [], collections.Counter()
    t0 = time.perf_counter() + 0.1
    sent = answered = 0
    while answered < total:
        now = time.perf_counter()
        while sent < total and t0 + sent / rate <= now:
            start(_Sending(sent, t0 + sent / rate))
            sent += 1
        wait = (t0 + sent / rate - time.perf_counter()) if sent < total else 1.0
        for key, _mask in selector.select(max(0.0, wait)):
            sock, sending = key.fileobj, key.data
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                sending.buffer += chunk
                status = _answer_complete(sending.buffer)
                if status is None:
                    continue
                selector.unregister(sock)
                idle.append((sock, time.perf_counter()))
            else:  # closed: an idle keep-alive the server dropped (resend once) or a failure
                selector.unregister(sock)
                sock.close()
                if not sending.buffer and not sending.resent:
                    sending.resent = True
                    start(sending, fresh=True)
                    continue
                status = "error"
            latencies.append((time.perf_counter() - sending.due) * 1000)
            statuses[str(status)] += 1
            answered += 1
        if sent == total and time.perf_counter() - (t0 + total / rate) > ANSWER_TIMEOUT_SECONDS:
            statuses["timeout"] += total - answered
            break
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    for sock, _last_used in idle:
        sock.close()
    ordered = sorted(latencies)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]  # noqa: E731
    return {"sent": total, "statuses": dict(statuses), "p50": pick(50), "p99": pick(99), "max": ordered[-1]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--requests", help="file of signed requests (one per line)")
    args = parser.parse_args(argv)
    host, port, path = re.match(r"http://([^:/]+):(\d+)(/.*)", args.url).groups()
    rows = []
    if args.requests:
        with open(args.requests) as f:
            rows = [line.rstrip("\n").split("\t", 3) for line in f]
    requests = build_requests(host, int(port), path, rows, int(args.rate * args.seconds))
    print(json.dumps(run(host, int(port), requests, args.rate)))


if __name__ == "__main__":
    sys.exit(main())
