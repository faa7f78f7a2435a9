"""waiting runs: follow-ups, deferrals and pauses between attempts (docs/ARCHITECTURE.md)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 23:30:00

The active-sync index now also holds a deferred run (waiting with not_before: it keeps its
place), a new index keeps one waiting follow-up per connection and parameter set, and the
queued-record index also covers a deferred record run.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

OLD_ACTIVE = "status IN ('queued', 'running') AND mode <> 'record'"
OLD_RECORD = "status = 'queued' AND mode = 'record'"
ACTIVE = "mode <> 'record' AND (status IN ('queued', 'running') OR (status = 'waiting' AND not_before IS NOT NULL))"
FOLLOW_UP = "mode <> 'record' AND status = 'waiting' AND not_before IS NULL"
RECORD = "mode = 'record' AND status IN ('queued', 'waiting')"


def _indexes(batch_op, active, record):
    batch_op.create_index('uq_runs_one_active_sync', ['connection_id'], unique=True,
                          sqlite_where=sa.text(active), postgresql_where=sa.text(active))
    batch_op.create_index('uq_runs_one_queued_record', ['connection_id', 'record_key'], unique=True,
                          sqlite_where=sa.text(record), postgresql_where=sa.text(record))


def upgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('not_before', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('deferrals', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('params_key', sa.String(length=40), nullable=True))
        batch_op.drop_index('uq_runs_one_active_sync')
        batch_op.drop_index('uq_runs_one_queued_record')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        _indexes(batch_op, ACTIVE, RECORD)
        batch_op.create_index('uq_runs_one_follow_up', ['connection_id', 'params_key'], unique=True,
                              sqlite_where=sa.text(FOLLOW_UP), postgresql_where=sa.text(FOLLOW_UP))


def downgrade():
    # Waiting runs have no place in the old schema: they are cancelled first.
    op.execute("UPDATE runs SET status = 'cancelled', not_before = NULL WHERE status = 'waiting'")
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('uq_runs_one_follow_up')
        batch_op.drop_index('uq_runs_one_queued_record')
        batch_op.drop_index('uq_runs_one_active_sync')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        _indexes(batch_op, OLD_ACTIVE, OLD_RECORD)
        batch_op.drop_column('params_key')
        batch_op.drop_column('deferrals')
        batch_op.drop_column('not_before')
