"""The JSON API's blueprint and the list of modules that add routes to it, in a module of
their own so that the route modules can use them without importing the package that
imports them (webapp/api/__init__.py loads the list)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")

# Modules of webapp/api that add routes to bp (each may describe them for /api/openapi.json).
API_MODULES = ("outbox", "common", "runs", "events", "cron", "stats", "records", "issues", "openapi")
