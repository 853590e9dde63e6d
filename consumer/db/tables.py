"""The tables. Alembic migrations in ``consumer/migrations`` create and change them;
a test checks that the migrations produce exactly these definitions."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from lifecycle_common.wire.limits import (
    EVENT_TYPE_LENGTH, HOST_LENGTH, NAME_LENGTH, STATE_REASON_LENGTH)

metadata = sa.MetaData()

# MariaDB/MySQL: every table in utf8mb4 with a binary collation, whatever the database's
# defaults. Names then compare as they do on PostgreSQL and SQLite, exactly: under the
# usual case- and accent-insensitive collations 'Compute-1' and 'compute-1' would be one
# key, and a message about one host could collide with, or pass for, another's.
MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# Microseconds on every backend (MySQL/MariaDB DATETIME defaults to whole seconds).
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")



def exact_text(length: int) -> sa.types.TypeEngine:
    """A host name or uuid column: a key, compared byte by byte on PostgreSQL (the "C"
    collation, migration 0006: its btrees compare with memcmp, not strcoll), as it is on
    MariaDB (utf8mb4_bin) and SQLite."""
    return sa.String(length).with_variant(postgresql.VARCHAR(length, collation="C"),
                                          "postgresql")


hosts = sa.Table(
    "hosts", metadata,
    sa.Column("name", exact_text(HOST_LENGTH), primary_key=True),
    sa.Column("status", sa.String(8), nullable=False),           # up, down
    sa.Column("agent_status", sa.String(16), nullable=False),     # running, stopping
    sa.Column("libvirt_connected", sa.Boolean, nullable=False),
    sa.Column("last_heartbeat_at", Timestamp, nullable=True),
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # Seconds the host's clock is ahead of ours (negative: behind), from its last
    # heartbeat: the moment it says, less when it arrived. Shown, never decided on.
    sa.Column("clock_offset", sa.Double, nullable=True),
    **MYSQL_TABLE,
)

# PostgreSQL: fillfactor 70 (migration 0005), so that rewriting a row is mostly a HOT
# update that touches no index.
instances = sa.Table(
    "instances", metadata,
    sa.Column("uuid", exact_text(36), primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("host", exact_text(HOST_LENGTH), nullable=False, index=True),
    sa.Column("power_state", sa.String(16), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("epoch", sa.BigInteger, nullable=False),             # of the event that set the row
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("last_event_type", sa.String(EVENT_TYPE_LENGTH), nullable=False),
    sa.Column("event_occurred_at", Timestamp, nullable=False),
    sa.Column("applied_at", Timestamp, nullable=False),
    # Why the instance is in its state, and what went wrong with it (migration 0007).
    # Each has a server default or admits NULL: a consumer of the release before, which
    # does not name them, still inserts rows once the schema is upgraded.
    # libvirt's reason for the power state, lower case (user, ioerror, panicked, ...);
    # NULL where unknown (set by an inventory).
    sa.Column("state_reason", sa.String(STATE_REASON_LENGTH), nullable=True),
    # Occurrences of instance.rebooted (the sum of their counts).
    sa.Column("reboots", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    # The newest watchdog, I/O error, control error, memory failure or panic: a JSON
    # object (consumer/fold.py, last_fault_json, says what it holds).
    sa.Column("last_fault", sa.Text, nullable=True),
    **MYSQL_TABLE,
)

# One row per applied message: applying is idempotent, and the journal is the audit.
journal = sa.Table(
    "journal", metadata,
    sa.Column("host", exact_text(HOST_LENGTH), primary_key=True),
    sa.Column("epoch", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_type", sa.String(EVENT_TYPE_LENGTH), nullable=False),
    sa.Column("instance_uuid", exact_text(36), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),           # applied, stale, ignored
    sa.Column("occurred_at", Timestamp, nullable=False),
    sa.Column("applied_at", Timestamp, nullable=False, index=True),
    # An instance's history (lifecycle-manage events list --instance, instance show).
    sa.Index("ix_journal_instance_uuid_applied_at", "instance_uuid", "applied_at"),
    **MYSQL_TABLE,
)

# One row per fault notification applied (the history ``instance show`` lists), and one
# per panic (a lifecycle event instance.crashed of libvirt's CRASHED). Keyed as the
# journal is; pruned with it.
faults = sa.Table(
    "faults", metadata,
    sa.Column("host", exact_text(HOST_LENGTH), primary_key=True),
    sa.Column("epoch", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("instance_uuid", exact_text(36), nullable=False),
    sa.Column("event_type", sa.String(EVENT_TYPE_LENGTH), nullable=False),
    sa.Column("occurred_at", Timestamp, nullable=False),        # the last occurrence
    sa.Column("first_occurred_at", Timestamp, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),          # occurrences it stands for
    sa.Column("fields", sa.Text, nullable=False),               # JSON: the fault's own fields
    sa.Column("applied_at", Timestamp, nullable=False, index=True),
    sa.Index("ix_faults_instance_uuid_occurred_at", "instance_uuid", "occurred_at"),
    **MYSQL_TABLE,
)
