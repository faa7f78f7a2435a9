"""Connectors: one small module per provider, registered by name (base.register), or one
YAML file per provider (declared/, docs/CONNECTORS.md). Shared HTTP, auth, paging and rate
limits live in http.py, pagination.py and ratelimit.py.

The registry is filled here, by importing the provider modules on first use, so the web
process pays for them only when needed; the provider modules import base.py, never this
package's own functions.
"""
import importlib

from .base import REGISTRY
from .errors import ConfigError

# Modules that define connectors.
CONNECTOR_MODULES = ("sandbox", "rest", "loops", "zoom", "highlevel", "halopsa", "notify")


def load_all():
    for module in CONNECTOR_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    # After the Python ones, so a file cannot take a Python connector's name.
    from .declared import register_all

    register_all()


def connector_class(name):
    """The connector class registered under `name` (ConfigError: no such connector)."""
    load_all()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown connector {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
