"""outbox_events: partial indexes of the rows still to send (neither done nor dead), the only
rows a claim looks at (webapp/outbox/claim.py; docs/PERFORMANCE.md, "Claims that walked the
sent rows")

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

# A copy of webapp/models.py's OUTBOX_UNSENT_WHERE as it was when written (a migration must
# not change with the code); a claim states it word for word.
UNSENT = "status NOT IN ('done', 'dead')"


def upgrade():
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_events_unsent', ['id'], unique=False,
                              sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
        batch_op.create_index('ix_outbox_events_unsent_key', ['key', 'id'], unique=False,
                              sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))


def downgrade():
    with op.batch_alter_table('outbox_events', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_events_unsent_key')
        batch_op.drop_index('ix_outbox_events_unsent')
