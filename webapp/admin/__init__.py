"""The admin pages: server-rendered, behind login, every POST CSRF-checked.

A page is added in one of two ways: a module of this package that attaches views to `bp`
(its name in ADMIN_MODULES), or an area's own blueprint kept beside that area's code (its
module in AREA_PAGES), which is nested in `bp`. Either way it gets a line in NAV. Login and
CSRF are enforced in `_guard` for `bp` and every blueprint nested in it, so an added page is
protected without doing anything. Templates extend "admin/base.html", the one layout.
"""
import importlib

from flask import redirect, request, url_for

from .blueprint import bp

# The navigation bar, in order: (endpoint, label). Add your page's line here.
NAV = (
    ("admin.dashboard", "Dashboard"),
    ("admin.history", "History"),
    ("admin.stats_page", "Statistics"),
    ("admin.webhooks.deliveries", "Webhooks"),
    ("admin.outbox.index", "Outbox"),
    ("admin.issues", "Issues"),
    ("admin.tokens", "API tokens"),
    ("admin.health", "Health"),
)

# Modules of this package that attach views to bp.
ADMIN_MODULES = ("auth", "filters", "dashboard", "connections", "runs", "live", "health", "tokens", "issues",
                 "statistics")
# Areas' blueprints nested in bp (each module exposes `bp`): /admin/<their url_prefix>.
AREA_PAGES = ("webapp.webhooks.views", "webapp.outbox.views")

# Endpoints reachable without logging in.
PUBLIC_ENDPOINTS = ("admin.login", "admin.static")


@bp.record_once
def _setup(state):
    from . import auth, security

    app = state.app
    auth.init_app(app)
    security.init_app(app)
    if not any(rule.rule == "/" for rule in app.url_map.iter_rules()):
        app.add_url_rule("/", "index", lambda: redirect(url_for("admin.dashboard")))


@bp.before_request
def _guard():
    from flask_login import current_user

    from .auth import csrf, login_manager

    changes_state = request.method not in ("GET", "HEAD", "OPTIONS")
    public = request.endpoint in PUBLIC_ENDPOINTS
    if not public and not current_user.is_authenticated:
        return login_manager.unauthorized()
    # A page of another site can make the browser send our cookie with a form or open a
    # websocket (which no CSRF token protects): both are refused when the browser says so.
    # The login form too, so no other site can sign a browser into an account of its choosing.
    if (changes_state or request.environ.get("HTTP_UPGRADE", "").lower() == "websocket") and _foreign_origin():
        return _refuse_foreign_origin()
    if changes_state:
        csrf.protect()
    return None


def _foreign_origin():
    """True when the browser named another site as the request's origin. Host names only: a
    proxy in front may change the scheme and port (docs/DEPLOY.md, "Behind a proxy")."""
    from urllib.parse import urlsplit

    origin = request.headers.get("Origin")
    if origin is None:
        return False  # not sent by older browsers and by non-browser clients; the CSRF token still applies
    return origin == "null" or urlsplit(origin).hostname != urlsplit("//" + request.host).hostname


def _refuse_foreign_origin():
    from flask import jsonify, render_template

    if request.environ.get("HTTP_UPGRADE", "").lower() == "websocket" or request.path.endswith(".json"):
        return jsonify(error="forbidden", reason="cross-origin request refused"), 403
    return render_template("admin/error.html", title="Refused", message=(
        "This request came from a page of another site, so it was refused. "
        "Use the admin pages of this site to make changes.")), 403


@bp.errorhandler(400)
def _bad_request(error):
    from flask import render_template
    from flask_wtf.csrf import CSRFError

    if isinstance(error, CSRFError):
        message = ("This form has expired or did not come from this site. "
                   "Go back, reload the page and try again.")
        if _secure_cookie_over_plain_http():
            message += (" (The session cookie is Secure, and browsers drop it on plain http except for "
                        "localhost: serve the admin over https, or set SYNCHUB_SECURE_COOKIES=0 on a trusted network.)")
    else:
        message = error.description
    return render_template("admin/error.html", title="Bad request", message=message), 400


@bp.errorhandler(404)
def _not_found(error):
    from flask import render_template

    message = error.description if error.description and "requested URL was not found" not in error.description \
        else "There is nothing at this address: the run or connection may have been removed, or the link is mistyped."
    return render_template("admin/error.html", title="Not found", message=message), 404


@bp.app_errorhandler(404)
def _no_such_page(error):
    # A URL that matches no route never reaches a blueprint's handler. A code handler wins
    # over the API's HTTPException one, so the API keeps its JSON here; the admin (and the
    # site root) get the styled page; anything else keeps the plain answer.
    from ..api.common import error_response

    if request.path.startswith("/api/"):
        return error_response(404, "not_found", error.description or error.name)
    if request.path == "/" or request.path.startswith(bp.url_prefix + "/"):
        return _not_found(error)
    return error


@bp.errorhandler(500)
def _server_error(error):
    from flask import render_template

    # The traceback is in the web log (Flask logs it); the page says what a person can do.
    return render_template("admin/error.html", title="Something went wrong",
                           message="The page could not be shown because of an error on our side. It has been "
                                   "logged; try again, and if it persists, the web process log has the details."), 500


def _secure_cookie_over_plain_http():
    from flask import current_app

    host = request.host.rsplit(":", 1)[0].strip("[]")
    return (current_app.config.get("SESSION_COOKIE_SECURE") and not request.is_secure
            and host not in ("localhost", "127.0.0.1", "::1"))


@bp.app_context_processor
def _nav():
    from flask import current_app

    # Entries whose page is not installed are left out rather than breaking every page.
    return {"admin_nav": [(endpoint, label) for endpoint, label in NAV if endpoint in current_app.view_functions]}


for _module in ADMIN_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
for _module in AREA_PAGES:
    bp.register_blueprint(importlib.import_module(_module).bp)
