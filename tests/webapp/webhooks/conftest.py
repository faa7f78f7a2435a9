"""Connectors that only declare a provider's signature scheme, so the Zoom, HighLevel and
HaloPSA verifiers are exercised through the real endpoint whatever provider connectors exist."""
import pytest

from webapp.connectors.base import Connector, Page, Stream, register


class _SchemeOnly(Connector):
    def read_page(self, stream, request, state):
        return Page([], None)


@register
class ZoomSchemeConnector(_SchemeOnly):
    name = "test-zoom-scheme"
    streams = (Stream("webinars"),)
    webhook_scheme = "zoom"

    def webhook_events(self, payload):
        obj = (payload.get("payload") or {}).get("object") or {}
        if payload.get("event") in ("webinar.updated", "webinar.deleted"):
            return [("webinars", str(obj["id"]), payload["event"] == "webinar.deleted")]
        return []


@register
class HighLevelSchemeConnector(_SchemeOnly):
    name = "test-highlevel-scheme"
    streams = (Stream("orders", primary_key="_id"),)
    webhook_scheme = "highlevel"

    def webhook_events(self, payload):
        return [("orders", str(payload["_id"]), False)] if payload.get("type") == "OrderCreate" else []


@register
class HaloSchemeConnector(_SchemeOnly):
    name = "test-halopsa-scheme"
    streams = (Stream("tickets"),)
    webhook_scheme = "halopsa"

    def webhook_events(self, payload):
        return [("tickets", str(payload["id"]), False)] if payload.get("id") else []


@pytest.fixture
def client(app):
    return app.test_client()
