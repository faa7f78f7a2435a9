"""connection issues by cause, and paused connections (docs/ARCHITECTURE.md, "Connection health")

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 23:35:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('paused_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('paused_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('paused_skipped', sa.Integer(), nullable=False, server_default='0'))
    op.create_table('connection_issues',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('cause', sa.String(length=40), nullable=False),
    sa.Column('opened_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.Column('resolved_at', sa.DateTime(), nullable=True),
    sa.Column('resolution', sa.Text(), nullable=True),
    sa.Column('occurrences', sa.Integer(), nullable=False),
    sa.Column('last_message', sa.Text(), nullable=True),
    sa.Column('run_ids', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_connection_issues_connection_id_connections'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_connection_issues'))
    )
    with op.batch_alter_table('connection_issues', schema=None) as batch_op:
        batch_op.create_index('ix_connection_issues_opened', ['opened_at'], unique=False)
        batch_op.create_index('uq_connection_issues_one_open', ['connection_id', 'cause'], unique=True,
                              sqlite_where=sa.text('resolved_at IS NULL'), postgresql_where=sa.text('resolved_at IS NULL'))


def downgrade():
    with op.batch_alter_table('connection_issues', schema=None) as batch_op:
        batch_op.drop_index('uq_connection_issues_one_open')
        batch_op.drop_index('ix_connection_issues_opened')
    op.drop_table('connection_issues')
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_column('paused_skipped')
        batch_op.drop_column('paused_reason')
        batch_op.drop_column('paused_at')
