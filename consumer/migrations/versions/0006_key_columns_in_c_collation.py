"""PostgreSQL: host names and uuids compared byte by byte (the "C" collation).

Every batch looks its instances up by uuid, locks its hosts by name and inserts a
journal row keyed by host, each through a btree of these columns; in the database's
default collation (en_US.UTF-8, C.UTF-8...) each comparison goes through the C
library's strcoll, in "C" it is a memcmp. Equality is exact either way (PostgreSQL's
collations are deterministic), so only the order of listings sorted by these columns
may change: byte order, as MariaDB's utf8mb4_bin (0002) and SQLite's BINARY give.
Measured on this machine (PostgreSQL 15, database in C.UTF-8; 76 batches of 500 state
changes of 10,000 instances, ``python -m benchmarks.micro_store statements``, the server
process's CPU, runs with and without alternated): 17.5 to 17.6 us per event against 19.0
to 19.6; the instance lookup 3.2 us against 3.8 to 3.9, the journal insert 7.7 against
8.3 to 8.5, the instances' update 5.7 against 6.0 to 6.2.

The upgrade rebuilds the indexes on these columns (the journal's primary key and its
index by instance among them) under an exclusive lock: minutes on a journal of tens of
millions of rows. Nothing changes on the other backends.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# table -> (column, varchar length) of its names and uuids
COLUMNS = {
    "hosts": (("name", 255),),
    "instances": (("uuid", 36), ("host", 255)),
    "journal": (("host", 255), ("instance_uuid", 36)),
}


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        changes = ", ".join(f"ALTER COLUMN {column} TYPE varchar({length}) COLLATE {collation}"
                            for column, length in columns)
        op.execute(f"ALTER TABLE {table} {changes}")


def upgrade():
    _collate('"C"')


def downgrade():
    _collate('"default"')
