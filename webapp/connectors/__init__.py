"""Connectors: one small module per provider. Shared HTTP, auth, paging and rate limits
live in http.py, pagination.py and ratelimit.py."""
import importlib

# Modules that define connectors; imported lazily so the web process pays only when needed.
CONNECTOR_MODULES = ("sandbox", "rest", "loops", "zoom", "highlevel", "halopsa")


def load_all():
    for module in CONNECTOR_MODULES:
        importlib.import_module(f"{__name__}.{module}")
