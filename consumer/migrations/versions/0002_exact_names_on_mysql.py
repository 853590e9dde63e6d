"""MariaDB/MySQL: every table in utf8mb4 with a binary collation.

0001 created the tables in the database's default character set and collation, which
on MariaDB is often latin1 (an instance named in Japanese could not be stored) or a
case- and accent-insensitive utf8mb4 collation (host 'Compute-1' was the same key as
'compute-1'). Names now compare exactly, as on PostgreSQL and SQLite. Nothing changes
on the other backends.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("hosts", "instances", "journal")


def upgrade():
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")


def downgrade():
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4 "
                   "COLLATE utf8mb4_general_ci")
