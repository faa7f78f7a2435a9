"""The migration history builds the whole schema from empty, on every backend."""
import os

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask_migrate import upgrade

from tests.conftest import BACKENDS, make_app
from tests.support import ROOT, Database
from webapp.extensions import db


def test_migrations_have_a_single_head():
    script = ScriptDirectory(os.path.join(ROOT, "migrations"))
    assert len(script.get_heads()) == 1


def test_upgrade_from_empty_builds_the_models_schema(tmp_path, redis_url):
    for backend in BACKENDS:
        database = Database(backend, str(tmp_path))
        try:
            app = make_app(database.url, redis_url, str(tmp_path / f"instance-{backend}"))
            with app.app_context():
                upgrade()
                inspector = sa.inspect(db.engine)
                assert set(inspector.get_table_names()) >= set(db.metadata.tables)
                for table in db.metadata.tables.values():
                    columns = {c["name"] for c in inspector.get_columns(table.name)}
                    assert columns == {c.name for c in table.columns}, table.name
                indexes = {i["name"] for i in inspector.get_indexes("runs")}
                assert "uq_runs_one_active_sync" in indexes
                db.engine.dispose()
        finally:
            database.drop()
