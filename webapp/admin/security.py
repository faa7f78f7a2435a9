"""Session cookie settings and security headers for every response.

Pages load scripts and styles only from /admin/static (no inline code), so the content
security policy can forbid everything else; websockets go back to the same host.
"""
from datetime import timedelta

from flask import request
from flask.sessions import SecureCookieSessionInterface

# Paths called by machines, never by a logged-in browser: no session cookie is read or
# signed for them (about a sixth of a webhook delivery's time in the web process).
SESSIONLESS_PREFIXES = ("/webhooks/",)


class SessionInterface(SecureCookieSessionInterface):
    def open_session(self, app, request):
        if request.path.startswith(SESSIONLESS_PREFIXES):
            return None  # Flask substitutes a NullSession: reading works, writing raises
        return super().open_session(app, request)

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def init_app(app):
    def default(key, value):  # ours, unless the deployment configured something else
        if app.config.get(key) == app.default_config.get(key):
            app.config[key] = value

    default("SESSION_COOKIE_NAME", "synchub_session")
    default("SESSION_COOKIE_SAMESITE", "Lax")
    default("PERMANENT_SESSION_LIFETIME", timedelta(hours=12))
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.session_interface = SessionInterface()
    # SESSION_COOKIE_SECURE comes from SYNCHUB_SECURE_COOKIES (default on): browsers keep
    # Secure cookies on plain http only for localhost, so elsewhere serve https.
    app.after_request(_add_headers)


def _add_headers(response):
    wanted = dict(HEADERS)
    if request.is_secure:
        wanted["Strict-Transport-Security"] = "max-age=31536000"
    if "admin" in request.blueprints and request.endpoint != "admin.static":
        # Admin pages show live operational data: never cached by the browser or a proxy.
        wanted["Cache-Control"] = "no-store"
    # Those a view set itself are kept. One pass over the response's few headers: werkzeug's
    # setdefault looks each name up by raising and catching an exception, which made these
    # headers a fifth of a webhook delivery's time in the web process.
    present = {name.lower() for name, _value in response.headers.items()}
    response.headers.extend([(name, value) for name, value in wanted.items() if name.lower() not in present])
    return response
