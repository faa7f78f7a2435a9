"""The admin blueprint. It has a module of its own so that the page modules can attach
their views to it without importing the package that imports them; its guard, its
navigation and the list of its pages are in webapp/admin/__init__.py."""
from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
