"""Hosts, instances and the journal of applied events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade():
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("agent_status", sa.String(16), nullable=False),
        sa.Column("libvirt_connected", sa.Boolean, nullable=False),
        sa.Column("last_heartbeat_at", Timestamp, nullable=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("power_state", sa.String(16), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("last_event_type", sa.String(64), nullable=False),
        sa.Column("event_occurred_at", Timestamp, nullable=False),
        sa.Column("applied_at", Timestamp, nullable=False),
    )
    op.create_index("ix_instances_host", "instances", ["host"])
    op.create_table(
        "journal",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("epoch", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("instance_uuid", sa.String(36), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.Column("applied_at", Timestamp, nullable=False),
    )
    op.create_index("ix_journal_applied_at", "journal", ["applied_at"])


def downgrade():
    op.drop_table("journal")
    op.drop_table("instances")
    op.drop_table("hosts")
