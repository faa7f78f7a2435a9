"""runs.stream_counters: a run's counters stream by stream (issue 19)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 00:15:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stream_counters', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('stream_counters')
