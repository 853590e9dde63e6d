"""What the loss checker (benchmarks/checker.py) compares with what the agents stamped:
the journal, the newest applied event of each instance and the instance rows, read
from a run's PostgreSQL database for the hosts whose names begin with a prefix."""

from __future__ import annotations

import sqlalchemy as sa

from benchmarks import checker

_JOURNAL = sa.text("SELECT host, epoch, seq FROM journal WHERE host LIKE :p")
_APPLIED = sa.text(
    "SELECT DISTINCT ON (instance_uuid) instance_uuid, epoch, seq FROM journal "
    "WHERE host LIKE :p AND outcome = 'applied' AND instance_uuid IS NOT NULL "
    "ORDER BY instance_uuid, epoch DESC, seq DESC")
_ROWS = sa.text("SELECT uuid, host, power_state, deleted, epoch, seq FROM instances "
                "WHERE host LIKE :p")


def read(conn: sa.Connection, prefix: str):
    """``(journal keys, newest applied (epoch, seq) by instance, rows by uuid)``."""
    like = {"p": prefix + "%"}
    journal = [tuple(r) for r in conn.execute(_JOURNAL, like)]
    applied = {r.instance_uuid: (r.epoch, r.seq) for r in conn.execute(_APPLIED, like)}
    rows = {r.uuid: checker.Row(r.host, r.power_state, bool(r.deleted), r.epoch, r.seq)
            for r in conn.execute(_ROWS, like)}
    return journal, applied, rows
