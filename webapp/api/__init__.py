"""The JSON API (/api/...): token-authenticated. Each area adds a module that attaches
its routes to `bp`, imported at the bottom so the routes exist once the blueprint does."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")

API_MODULES = ("outbox", "common", "runs", "events", "cron", "stats", "records", "openapi")  # modules of this package that add routes to bp, e.g. ("runs", "events")


def load_routes():
    import importlib

    for module in API_MODULES:
        importlib.import_module(f"{__name__}.{module}")
