"""PostgreSQL: room in each page of ``instances`` for the new version of a row.

Every applied event rewrites its instance's row. With full pages (the default fillfactor
of 100) the new version goes to another page, and each of the table's indexes gets an
entry for it; with room on the page the update is a heap-only tuple (HOT) update, and no
index is touched. Measured on this machine (PostgreSQL 15, 500-event batches of state
changes of 10,000 instances, the server process's CPU): 22 us per event with 100, 19
with 70, 18 with 50. Pages written from here on keep 30% free; the other backends have
no such setting.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FILLFACTOR = 70


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE instances SET (fillfactor = {FILLFACTOR})")


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE instances RESET (fillfactor)")
