"""run_rollups: finished runs per connection, hour or day, and status, for the statistics;
runs.rate_limit_wait_seconds (issue 18, docs/ARCHITECTURE.md "Statistics")

The upgrade fills the roll-ups from the runs already there. Its bin arithmetic is a copy of
webapp/rollups.py's as it was when written (a migration must not change with the code).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 22:00:00
"""
import math
from datetime import datetime, timedelta

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BINS = 192
COUNTERS = ("runs", "seen", "created", "updated", "deleted", "skipped", "retries", "durations")
ADDED = (*COUNTERS, "duration_sum", "rate_limit_wait_seconds")
PERIODS = (3600, 86400)
EPOCH = datetime(2000, 1, 1)


def _bin(seconds):
    if seconds < 0.01:
        return 0
    return min(BINS - 1, int(math.log2(seconds / 0.01) * 8) + 1)


def _start(moment, seconds):
    return EPOCH + timedelta(seconds=((moment - EPOCH).total_seconds() // seconds) * seconds)


def upgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rate_limit_wait_seconds', sa.Float(), nullable=False, server_default='0'))
    table = op.create_table(
        'run_rollups',
        sa.Column('period_seconds', sa.Integer(), nullable=False),
        sa.Column('connection_id', sa.Integer(), nullable=False),
        sa.Column('period_start', sa.DateTime(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False, server_default='0') for name in COUNTERS),
        sa.Column('duration_sum', sa.Float(), nullable=False, server_default='0'),
        sa.Column('rate_limit_wait_seconds', sa.Float(), nullable=False, server_default='0'),
        *(sa.Column(f'd{k}', sa.Integer(), nullable=False, server_default='0') for k in range(BINS)),
        sa.ForeignKeyConstraint(['connection_id'], ['connections.id'],
                                name=op.f('fk_run_rollups_connection_id_connections'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('period_seconds', 'connection_id', 'period_start', 'status', name=op.f('pk_run_rollups')),
    )
    with op.batch_alter_table('run_rollups', schema=None) as batch_op:
        batch_op.create_index('ix_run_rollups_period', ['period_seconds', 'period_start'], unique=False)
    _backfill(table)


def _backfill(table):
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT connection_id, created_at, status, seen, created, updated, deleted, failed, attempt, "
        "started_at, finished_at FROM runs WHERE status IN ('completed', 'failed', 'cancelled')"))
    sums = {}
    for connection_id, created_at, status, seen, created, updated, deleted, failed, attempt, started, finished in rows:
        if isinstance(created_at, str):  # SQLite through text(): no type to convert by
            created_at = datetime.fromisoformat(created_at)
            started = datetime.fromisoformat(started) if started else None
            finished = datetime.fromisoformat(finished) if finished else None
        values = {"runs": 1, "seen": seen or 0, "created": created or 0, "updated": updated or 0,
                  "deleted": deleted or 0, "skipped": failed or 0, "retries": max((attempt or 0) - 1, 0)}
        k = None
        if status in ("completed", "failed") and started is not None and finished is not None:
            duration = (finished - started).total_seconds()
            values["durations"], values["duration_sum"], k = 1, duration, _bin(duration)
        for seconds in PERIODS:
            key = (seconds, connection_id, _start(created_at, seconds), status)
            target = sums.get(key)
            if target is None:
                target = sums[key] = [0] * (len(ADDED) + BINS)
            for i, name in enumerate(ADDED):
                target[i] += values.get(name, 0)
            if k is not None:
                target[len(ADDED) + k] += 1
    names = [*ADDED, *(f'd{k}' for k in range(BINS))]
    batch = []
    for (seconds, connection_id, start, status), values in sums.items():
        batch.append({"period_seconds": seconds, "connection_id": connection_id, "period_start": start,
                      "status": status, **dict(zip(names, values))})
        if len(batch) >= 20_000:
            bind.execute(table.insert(), batch)
            batch = []
    if batch:
        bind.execute(table.insert(), batch)


def downgrade():
    with op.batch_alter_table('run_rollups', schema=None) as batch_op:
        batch_op.drop_index('ix_run_rollups_period')
    op.drop_table('run_rollups')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('rate_limit_wait_seconds')
