"""Admin login: argon2 password hashes, sessions through Flask-Login, and a brake on
guessing (per account in the users table, per client address in Redis).

Every page on the admin blueprint, and on the areas' blueprints nested in it, is guarded
in webapp/admin/__init__.py.
"""
import functools
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import argon2.profiles
import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app, flash, jsonify, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import func, select, update
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from .. import redis_keys
from ..extensions import db, redis_ext
from ..models import User, utcnow
from .blueprint import bp

log = logging.getLogger(__name__)

login_manager = LoginManager()
csrf = CSRFProtect()
_hashers = {}  # profile name -> (PasswordHasher, a hash to verify against for unknown emails)


def init_app(app):
    if "login_manager" in app.extensions or getattr(app, "login_manager", None):
        return
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)  # only the admin blueprint is a browser surface
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # the token lives as long as the session
    login_manager.init_app(app)
    login_manager.login_view = "admin.login"
    login_manager.session_protection = "basic"
    csrf.init_app(app)
    app.extensions["login_manager"] = login_manager


# -- passwords -------------------------------------------------------------------------
def _hasher():
    """argon2id with the configured profile (default RFC 9106's low-memory choice). Built on
    first use, not at import, so processes that never check a password never pay for it."""
    name = current_app.config.get("ARGON2_PROFILE") or "RFC_9106_LOW_MEMORY"
    if name not in _hashers:
        try:
            hasher = PasswordHasher.from_parameters(getattr(argon2.profiles, name))
        except AttributeError:
            raise ValueError(f"ARGON2_PROFILE {name!r} is not one of argon2.profiles") from None
        # Verified against when the email is unknown, so both answers take the same time.
        _hashers[name] = (hasher, hasher.hash("synchub-timing-equaliser"))
    return _hashers[name]


def hash_password(password):
    return _hasher()[0].hash(password)


def verify_password(password_hash, password):
    try:
        return _hasher()[0].verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# -- the logged-in user ----------------------------------------------------------------
@dataclass
class AdminUser:
    """What the session knows: the id and a fingerprint of the password hash, so changing
    a password ends every session made with the old one."""

    id: int
    email: str
    fingerprint: str
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self):
        return f"{self.id}.{self.fingerprint}"


def _fingerprint(password_hash):
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@login_manager.user_loader
def _load_user(session_id):
    user_id, _, fingerprint = str(session_id).partition(".")
    if not user_id.isdigit() or _session_ended(session.get(SESSION_ID)):
        return None
    user = db.session.get(User, int(user_id))
    if user is None or not user.is_admin or _fingerprint(user.password_hash) != fingerprint:
        return None
    return AdminUser(user.id, user.email, fingerprint)


@login_manager.unauthorized_handler
def _unauthorized():
    if request.accept_mimetypes.best == "application/json" or request.path.endswith(".json") \
            or request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        return jsonify(error="unauthorized", reason="log in to the admin first"), 401
    target = request.full_path if request.method == "GET" else None
    return redirect(url_for("admin.login", next=target.rstrip("?") if target else None))



# -- sessions that end ---------------------------------------------------------------
# The session is a signed cookie kept by the browser, so signing out cannot delete it: a
# copy taken before (by malware, a shared machine, a proxy log) would go on working until
# it expires. Each login gets a random session id instead, and signing out records that id
# as ended in Redis until the cookie would have expired anyway.
SESSION_ID = "sid"


def _start_session():
    session.clear()  # a fresh session: nothing from before the login carries over (fixation)
    session[SESSION_ID] = secrets.token_urlsafe(24)
    session.permanent = True


def _end_session():
    sid = session.get(SESSION_ID)
    client = redis_ext.optional()
    if sid and client is not None:
        try:
            lifetime = current_app.permanent_session_lifetime
            client.set(redis_keys.key("admin-session-ended", sid), 1, ex=int(lifetime.total_seconds()) + 60)
        except redis.RedisError:
            log.warning("Redis is unavailable: the signed-out session cookie stays valid until it expires")
    session.clear()


def _session_ended(sid):
    if not sid:
        return True  # a session not made by login() (an old cookie, or a forged one)
    client = redis_ext.optional()
    if client is None:
        return False  # without Redis, sign-out cannot be remembered; the cookie's expiry still applies
    try:
        return bool(client.exists(redis_keys.key("admin-session-ended", sid)))
    except redis.RedisError:
        return False


# -- signing in, with a brake on guessing ----------------------------------------------
class LoginRefused(Exception):
    pass


def authenticate(email, password, client_ip, now=None):
    """The User for a correct email and password, else LoginRefused with a message safe to
    show. An account locks after LOGIN_MAX_FAILURES wrong passwords for LOGIN_LOCK_SECONDS;
    after LOGIN_MAX_FAILURES_PER_IP failures from one client address in that window, a failure
    from it no longer says whether the email exists (a right password still signs in)."""
    now = now or utcnow()
    config = current_app.config
    lock_seconds = config["LOGIN_LOCK_SECONDS"]
    # A braked address is not locked out: many people may share it (an office, a proxy not
    # declared in SYNCHUB_TRUSTED_PROXIES), and 30 wrong guesses by one of them must not
    # keep the others out. It only stops learning anything from a wrong guess: every
    # failure from it says the same thing, whether the email exists or not, so it cannot
    # enumerate accounts; and guessing one account's password stays bounded by that
    # account's own lock, which counts failures from every address.
    wrong = "Wrong email or password."
    if _ip_failures(client_ip) >= config["LOGIN_MAX_FAILURES_PER_IP"]:
        wrong = "Too many failed sign-in attempts from your address. Try again later."
    email = (email or "").strip().lower()
    user = db.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one_or_none()
    if user is not None and user.locked_until and user.locked_until > now:
        minutes = max(1, round((user.locked_until - now).total_seconds() / 60))
        raise LoginRefused(f"Too many failed sign-in attempts. Try again in {minutes} minute(s).")
    if user is None or not user.is_admin:
        verify_password(_hasher()[1], password)
        _count_ip_failure(client_ip, lock_seconds)
        raise LoginRefused(wrong)
    if not verify_password(user.password_hash, password):
        _count_account_failure(user.id, now, config["LOGIN_MAX_FAILURES"], lock_seconds)
        _count_ip_failure(client_ip, lock_seconds)
        raise LoginRefused(wrong)
    values = {User.failed_logins: 0, User.locked_until: None, User.last_login_at: now}
    if _hasher()[0].check_needs_rehash(user.password_hash):
        values[User.password_hash] = hash_password(password)
    db.session.execute(update(User).where(User.id == user.id).values(values))
    db.session.commit()
    return db.session.get(User, user.id)


def _count_account_failure(user_id, now, max_failures, lock_seconds):
    # Increment in the database, so parallel guesses from many web processes all count.
    db.session.execute(update(User).where(User.id == user_id).values(failed_logins=User.failed_logins + 1))
    db.session.execute(
        update(User).where(User.id == user_id, User.failed_logins >= max_failures)
        .values(failed_logins=0, locked_until=now + timedelta(seconds=lock_seconds))
    )
    db.session.commit()


def _ip_failures(client_ip):
    client = redis_ext.optional()
    if client is None:
        return 0
    try:
        return int(client.get(redis_keys.key("login-failures", client_ip)) or 0)
    except redis.RedisError:
        return 0  # the per-account lock in the database still applies


def _count_ip_failure(client_ip, window_seconds):
    client = redis_ext.optional()
    if client is None:
        return
    key = redis_keys.key("login-failures", client_ip)
    try:
        if client.incr(key) == 1:  # the window starts at the first failure
            client.expire(key, int(window_seconds))
    except redis.RedisError:
        pass


def create_admin(email, password):
    email = email.strip().lower()
    if len(password) < 10:
        raise ValueError("the password must have at least 10 characters")
    if db.session.execute(select(User.id).where(func.lower(User.email) == email)).first():
        raise ValueError(f"a user {email} already exists")
    user = User(email=email, password_hash=hash_password(password), is_admin=True)
    db.session.add(user)
    db.session.commit()
    return user


def set_password(email, password):
    if len(password) < 10:
        raise ValueError("the password must have at least 10 characters")
    result = db.session.execute(
        update(User).where(func.lower(User.email) == email.strip().lower())
        .values(password_hash=hash_password(password), failed_logins=0, locked_until=None)
    )
    db.session.commit()
    if result.rowcount != 1:
        raise LookupError(f"no user {email}")


# -- views -------------------------------------------------------------------------------
class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def _safe_next(target):
    """Only a path on this site: never an open redirect to somewhere else."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("admin.dashboard"))
    form = LoginForm()
    error = None
    status = 200
    if form.validate_on_submit():
        try:
            user = authenticate(form.email.data, form.password.data, request.remote_addr or "unknown")
        except LoginRefused as exc:
            error, status = str(exc), 401
            log.info("admin login refused for a sign-in attempt from %s", request.remote_addr)
        else:
            _start_session()
            login_user(AdminUser(user.id, user.email, _fingerprint(user.password_hash)))
            return redirect(_safe_next(request.args.get("next")) or url_for("admin.dashboard"))
    elif request.method == "POST":
        error, status = "Enter your email and password.", 400
    return render_template("admin/login.html", form=form, error=error), status


@bp.route("/logout", methods=["POST"])
def logout():
    logout_user()
    _end_session()
    flash("Signed out.", "info")
    return redirect(url_for("admin.login"))
