"""Notifications out: synchub's own alerts and connection issues, delivered through the
outbox (so they are retried with backoff, in order per subject, dead-lettered and
retryable from the admin) to a JSON webhook of yours or to Slack.

Credentials (secret: a Slack webhook URL is a password): `url`, and `signing_secret`
("whsec_<base64>") for the signed JSON format. Setting `format`:
    standard  (default) {"type", "timestamp", "data"} signed per Standard Webhooks
              (webhook-id = the outbox row's idempotency key, so a retry is recognisable)
    slack     Slack's incoming-webhook JSON, {"text": "..."}
Every enabled notify connection gets every notification (docs/CONNECTORS.md, "Notifications").
"""
import base64
import hashlib
import hmac
import json
import time

from ..webhooks.signatures import standard_secret_bytes
from .base import Connector, register
from .errors import ConfigError, SyncError
from .http import redact_url
from .mapping import MappingError
from .settings_spec import SettingSpec

TYPES = ("issue.opened", "issue.resolved", "alert.fired", "alert.resolved")
FORMATS = ("standard", "slack")


@register
class NotifyConnector(Connector):
    name = "notify"
    title = "Notifications (a signed JSON webhook, or Slack; outbound)"
    provider = "the notification endpoint"
    streams = ()
    supported_modes = ()
    settings_spec = (
        SettingSpec("format", "choice", "standard", "standard: signed JSON (Standard Webhooks); slack: Slack's "
                    "incoming-webhook JSON", choices=FORMATS),
    )
    credential_fields = ("url", "signing_secret")
    # The endpoint says the request is wrong, or the hook is gone (Slack: 404 no_service, 410):
    # retrying cannot help; the event is dead-lettered for a person.
    permanent_statuses = (400, 404, 410, 422)

    def read_page(self, stream, request, state):
        raise ConfigError("a notify connection is an outbound destination: it has no streams to sync")

    @classmethod
    def plan(cls, settings, event_type, key, payload):
        """One request per notification; other event types are not for this destination."""
        if event_type not in TYPES:
            return []
        if not isinstance(payload.get("text"), str):
            raise MappingError("a notification needs a text")
        return [{"key": key, "payload": {"type": event_type, "data": payload}}]

    def send(self, action, idempotency_key):
        url = self.credentials.get("url")
        if not url:
            raise ConfigError("the notify connection has no url credential")
        form = (self.settings or {}).get("format") or "standard"
        if form not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}")
        if form == "slack":
            body = json.dumps({"text": action["data"]["text"]}).encode()
            headers = {"Content-Type": "application/json"}
        else:
            body, headers = self._signed(action, idempotency_key)
        try:
            response = self._client(url).request("POST", url, data=body, headers=headers)
        except SyncError as exc:
            # The URL is a secret (Slack's carries its token in the path): never in an error.
            exc.args = (str(exc).replace(redact_url(url), "POST to the notification endpoint"), *exc.args[1:])
            raise
        response.close()
        return f"delivered ({response.status_code})"

    def _signed(self, action, idempotency_key):
        secret = self.credentials.get("signing_secret")
        if not secret:
            raise ConfigError("the notify connection has no signing_secret credential (format standard)")
        try:
            key = standard_secret_bytes(secret)
        except Exception:  # SignatureError: a refusal of inbound webhooks, here a setting to fix
            raise ConfigError("the signing_secret credential is not a whsec_<base64> secret") from None
        timestamp = str(int(time.time()))
        body = json.dumps({"type": action["type"], "timestamp": timestamp, "data": action["data"]},
                          separators=(",", ":")).encode()
        mac = hmac.new(key, f"{idempotency_key}.{timestamp}.".encode() + body,
                       hashlib.sha256).digest()
        return body, {"Content-Type": "application/json", "webhook-id": idempotency_key,
                      "webhook-timestamp": timestamp, "webhook-signature": "v1," + base64.b64encode(mac).decode()}

    def _client(self, url):
        if getattr(self, "_http", None) is None:
            # The outbox retries with backoff recorded in the database, never in a worker.
            self._http = self.services.http(url, max_retries=0,
                                            timeout=float(self.services.config["OUTBOX_HTTP_TIMEOUT_SECONDS"]))
        return self._http

    def close(self):
        if getattr(self, "_http", None) is not None:
            self._http.close()
            self._http = None
