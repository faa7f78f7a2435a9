"""The JSON API (/api/...): token-authenticated. Each area adds a module that attaches
its routes to `bp` (webapp/api/blueprint.py) and names it in API_MODULES."""
from .blueprint import API_MODULES, bp


def load_routes():
    import importlib

    for module in API_MODULES:
        importlib.import_module(f"{__name__}.{module}")
