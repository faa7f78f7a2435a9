"""One process instead of one `flask` command each (each costs seconds on a loaded machine):
migrate the database, create the API token and the connections, print the token.

    echo '{"connections": [{"name": ..., "connector": ..., "settings": {}, ...}]}' | python -m tests.chaos.seed
"""
import json
import sys

from flask_migrate import upgrade

from webapp import create_app
from webapp.api.auth import create_token
from webapp.extensions import db
from webapp.models import Connection


def main():
    spec = json.load(sys.stdin)
    app = create_app()
    with app.app_context():
        upgrade()
        for c in spec.get("connections", []):
            connection = Connection(name=c["name"], connector=c["connector"], settings=c.get("settings") or {},
                                    schedule=c.get("schedule", "manual"), enabled=True)
            connection.credentials = c.get("credentials") or {}
            db.session.add(connection)
        db.session.commit()
        print(create_token("chaos") if spec.get("token") else "")


if __name__ == "__main__":
    main()
