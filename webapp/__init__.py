"""synchub: the Flask app and the domain (what runs, connections and records are)."""
import importlib
import os
import secrets

from flask import Flask

# Blueprints by area (one line each), besides the API blueprint in webapp/api.
BLUEPRINT_MODULES = (
    "webapp.webhooks.routes",
    "webapp.admin", "webapp.health", "webapp.metrics",
)
# Extra CLI groups: (module, AppGroup attribute).
CLI_GROUPS = (
    ("webapp.admin.cli", "users_cli"), ("webapp.admin.cli", "secrets_cli"),
    ("webapp.outbox.cli", "outbox_cli"),
    ("webapp.api.cli", "tokens_cli"),
    ("webapp.connectors.declared.cli", "connectors_cli"),
)


def create_app(config=None):
    """Build the app. `config` (a dict) overrides settings read from the environment."""
    app = Flask(__name__, instance_path=os.environ.get("SYNCHUB_INSTANCE_PATH") or None,
                instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)

    from .config import Config
    from .jsonutil import serialize

    app.config.from_mapping(Config(app.instance_path).as_dict())
    if config:
        app.config.from_mapping(config)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
    app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("json_serializer", serialize)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _instance_secret(app.instance_path)
    if app.config["TRUSTED_PROXIES"] > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Only as many X-Forwarded-* entries as there are proxies of ours are believed: the
        # rest were written by the client (docs/DEPLOY.md, "Behind a proxy").
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)

    from .extensions import db, migrate, redis_ext, sock

    db.init_app(app)
    # Batch mode: SQLite cannot ALTER most things in place; Alembic copies the table instead.
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations"),
                     render_as_batch=True)
    sock.init_app(app)
    redis_ext.init_app(app)
    from . import metrics

    metrics.init_app(app)

    from . import models  # noqa: F401  (tables must be known to Alembic)
    from .api import bp as api_bp
    from .api import load_routes
    from .cli import connections_cli, sync_cli

    load_routes()
    app.register_blueprint(api_bp)
    for module in BLUEPRINT_MODULES:  # each exposes `bp`
        app.register_blueprint(importlib.import_module(module).bp)
    for command in (sync_cli, connections_cli) + tuple(
        getattr(importlib.import_module(module), name) for module, name in CLI_GROUPS
    ):
        app.cli.add_command(command)

    from . import logs

    logs.configure(level=app.config["LOG_LEVEL"], fmt=app.config["LOG_FORMAT"])
    # A broken connector file is named in the log at start (file, line, field), not at its first run.
    from .connectors.declared import check_files

    check_files(app.config["CONNECTORS_DIR"])
    return app


def _instance_secret(instance_path):
    """A stable SECRET_KEY for a fresh machine, so sessions survive restarts."""
    path = os.path.join(instance_path, "secret_key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        import time

        for _ in range(50):  # another process created it a moment ago and is writing it
            with open(path) as f:
                key = f.read().strip()
            if key:
                return key
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: delete it and restart")
    with os.fdopen(fd, "w") as f:
        key = secrets.token_hex(32)
        f.write(key)
    return key
