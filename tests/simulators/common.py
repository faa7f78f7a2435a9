"""Pieces the provider simulators share: JSON answers, a provider-side rate limit that
counts violations, issued tokens that expire or get revoked, hooks for changing data in
the middle of a sync, and signed webhook delivery to a URL.

A simulator enforces limits the way the provider does (a sliding window over arrivals,
as the provider measures them), so a client that exceeds them gets 429 and the test can
assert `violations == 0`.
"""
import base64
import collections
import json
import math
import secrets
import threading
import time

import requests
from werkzeug.wrappers import Response


def answer(obj, status=200, headers=None):
    return Response(json.dumps(obj), status, headers=headers, content_type="application/json")


class Window:
    """At most `limit` arrivals in any `seconds`; what is over the limit is a violation."""

    def __init__(self, limit, seconds):
        self.limit, self.seconds = int(limit), float(seconds)
        self.arrivals = collections.deque()
        self.violations = 0
        self.admitted = 0
        self.busiest = 0  # most arrivals admitted within one window, for tests and benchmarks

    def admit(self, now):
        """(admitted, remaining, seconds until a slot frees)."""
        while self.arrivals and self.arrivals[0] <= now - self.seconds:
            self.arrivals.popleft()
        if len(self.arrivals) >= self.limit:
            self.violations += 1
            return False, 0, self.arrivals[0] + self.seconds - now
        self.arrivals.append(now)
        self.admitted += 1
        self.busiest = max(self.busiest, len(self.arrivals))
        return True, self.limit - len(self.arrivals), 0.0


class Tokens:
    """Bearer tokens a simulator issued: each expires after `ttl` seconds, and a test can
    expire all of them (token expiry mid-sync) or revoke them with the client (401 forever)."""

    def __init__(self, ttl, prefix="tok"):
        self.ttl = ttl
        self.prefix = prefix
        self.issued = 0
        self._expiry = {}
        self._lock = threading.Lock()

    def issue(self, ttl=None):
        token = f"{self.prefix}-{secrets.token_hex(16)}"
        with self._lock:
            self._expiry[token] = time.monotonic() + (self.ttl if ttl is None else ttl)
            self.issued += 1
        return token

    def valid(self, token):
        with self._lock:
            expiry = self._expiry.get(token)
        return expiry is not None and time.monotonic() < expiry

    def known(self, token):
        with self._lock:
            return token in self._expiry

    def expire_all(self):
        with self._lock:
            for token in self._expiry:
                self._expiry[token] = 0.0

    def revoke_all(self):
        with self._lock:
            self._expiry.clear()


def bearer(request):
    header = request.headers.get("Authorization", "")
    return header[len("Bearer "):].strip() if header[:7].lower() == "bearer " else None


class ProviderAPI:
    """Base of the provider simulators: request counting, hooks, /__stats."""

    def __init__(self):
        self.lock = threading.RLock()
        self.requests = collections.Counter()  # route ("GET /webinars/{id}") -> count
        self._hooks = []  # [remaining, path prefix or None, fn]
        # Seconds each answer takes, spent after the request was admitted and counted, as
        # a provider's processing and the trip back would: the arrival time the rate limit
        # sees is not blurred by how precisely a sleeping thread wakes up.
        self.latency = 0.0

    def after(self, count, fn, path=None):
        """Call fn() once, right after the count-th request to a path starting with `path`
        has been answered (data changes mid-sync)."""
        with self.lock:
            self._hooks.append([count, path, fn])

    def _count(self, method, pattern, path):
        with self.lock:
            self.requests[pattern] += 1
            due = []
            for hook in self._hooks:
                if hook[1] is None or path.startswith(hook[1]):
                    hook[0] -= 1
                    if hook[0] == 0:
                        due.append(hook)
            for hook in due:
                self._hooks.remove(hook)
        return [hook[2] for hook in due]

    def stats(self):
        """What /__stats answers: request counts and rate-limit violations."""
        with self.lock:
            return {"requests": dict(self.requests), "total_requests": sum(self.requests.values())}

    def __call__(self, environ, start_response):
        from werkzeug.wrappers import Request

        request = Request(environ)
        if request.path == "/__stats":
            return answer(self.stats())(environ, start_response)
        pattern, response = self.handle(request)
        hooks = self._count(request.method, pattern, request.path) if pattern else []
        if self.latency:
            time.sleep(self.latency)
        result = response(environ, start_response)
        for fn in hooks:
            fn()
        return result

    def handle(self, request):
        """(route pattern for counting or None, Response). Subclasses route here."""
        return None, answer({"message": "not found"}, 404)


def retry_after_seconds(wait):
    return str(max(1, math.ceil(wait)))


def basic_auth(username, password):
    """The Authorization header of HTTP Basic credentials."""
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def post_webhook(url, body, headers, timeout=10):
    """Deliver a webhook the way the provider does: raw bytes, its headers, a JSON type."""
    return requests.post(url, data=body, headers={"Content-Type": "application/json", **headers}, timeout=timeout)
