"""A notification receiver: what a team's own endpoint for synchub's alerts does. It
checks the Standard Webhooks signature itself (hmac and base64, from the specification,
independent of synchub's code), refuses a bad one with 401, and keeps what it accepted.
`down` answers 503 to everything, as an endpoint being deployed would."""
import base64
import hashlib
import hmac
import json
import threading

from werkzeug.wrappers import Request, Response


class NotificationReceiver:
    def __init__(self, secret=None):
        self.secret = secret
        self.down = False
        self.lock = threading.Lock()
        self.accepted = []  # (webhook-id or None, parsed body)
        self.refused = 0

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        if self.down:
            return Response("down for maintenance", 503)(environ, start_response)
        msg_id = request.headers.get("webhook-id")
        if self.secret is not None and not self._verified(request.headers, body):
            with self.lock:
                self.refused += 1
            return Response("bad signature", 401)(environ, start_response)
        with self.lock:
            self.accepted.append((msg_id, json.loads(body)))
        return Response("ok", 200)(environ, start_response)

    def _verified(self, headers, body):
        msg_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        expected = base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
                                    .digest()).decode()
        return any(part == f"v1,{expected}" for part in headers.get("webhook-signature", "").split())

    def of_type(self, event_type):
        with self.lock:
            return [body for _, body in self.accepted if body.get("type") == event_type]

    def ids(self):
        with self.lock:
            return [msg_id for msg_id, _ in self.accepted]
