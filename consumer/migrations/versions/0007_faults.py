"""Why an instance is in its state: its state's reason, its reboots, its last fault,
and the table of faults (issue 18).

``instances`` gains ``state_reason`` (libvirt's reason for the power state, lower case,
NULL where unknown), ``reboots`` (occurrences of instance.rebooted) and ``last_fault``
(a JSON object: the newest watchdog, I/O error, control error, memory failure or
panic). Each admits NULL or has a server default, so that a consumer of the release
before, which names none of them, keeps inserting rows once the schema is upgraded
(the upgrade path is: ``db sync``, then consumers, then agents). Adding them rewrites
no row: PostgreSQL (11 and later) and MariaDB (10.3 and later) add a column with a
constant default in the catalogue only.

``faults`` holds one row per fault notification applied and one per panic, keyed by
the notification's ``(host, epoch, seq)`` as the journal is, and pruned with it. Its
names and uuids are in the "C" collation on PostgreSQL (as 0006 made the others), and
the table in utf8mb4 with a binary collation on MariaDB/MySQL (as 0002 made the others).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _exact_text(length: int):
    return sa.String(length).with_variant(postgresql.VARCHAR(length, collation="C"),
                                          "postgresql")


def upgrade():
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("state_reason", sa.String(32), nullable=True))
        batch.add_column(sa.Column("reboots", sa.BigInteger, nullable=False,
                                   server_default=sa.text("0")))
        batch.add_column(sa.Column("last_fault", sa.Text, nullable=True))
    op.create_table(
        "faults",
        sa.Column("host", _exact_text(255), primary_key=True),
        sa.Column("epoch", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("instance_uuid", _exact_text(36), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.Column("first_occurred_at", Timestamp, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("applied_at", Timestamp, nullable=False),
        mysql_charset="utf8mb4", mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_faults_applied_at", "faults", ["applied_at"])
    op.create_index("ix_faults_instance_uuid_occurred_at", "faults",
                    ["instance_uuid", "occurred_at"])


def downgrade():
    op.drop_table("faults")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("last_fault")
        batch.drop_column("reboots")
        batch.drop_column("state_reason")
