"""Each host's clock offset: how far the moment its last heartbeat says lies from when
that heartbeat arrived here.

Clocks decide nothing (liveness is when a heartbeat arrives, order is each host's own
sequence); the offset is kept so that an operator sees a host whose clock is wrong
(``lifecycle-manage host list``) and the consumer can warn about it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("clock_offset", sa.Double, nullable=True))


def downgrade():
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("clock_offset")
