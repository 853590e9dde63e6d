"""The journal indexed by instance and moment applied: an instance's history.

``lifecycle-manage events list --instance`` and ``instance show`` read it; without the
index they read the whole journal.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_journal_instance_uuid_applied_at", "journal",
                    ["instance_uuid", "applied_at"])


def downgrade():
    op.drop_index("ix_journal_instance_uuid_applied_at", table_name="journal")
