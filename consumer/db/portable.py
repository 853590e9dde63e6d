"""A batch's reads and writes through SQLAlchemy Core, on every backend.

The contract (``postgresql_pipeline.PipelinedTransaction`` keeps it too), all in one
transaction that the caller began:
- ``journaled(keys)``: which of the ``(host, epoch, seq)`` keys the journal holds;
- ``load(uuids, inventory_hosts, host_names)``: the instance rows of ``uuids`` and every
  row not deleted of ``inventory_hosts`` (``{uuid: InstanceRow}``), then the host rows
  of ``host_names`` (``{name: HostRow}``), all locked until the transaction ends;
- ``last_words(wanted)``: for each ``(uuid, host)`` pair the newest ``(epoch, seq)`` the
  journal holds from that host about that instance (pairs it holds none of are absent);
- ``write(writes)``: the ``fold.Writes`` in their order. A new row whose key exists
  already (another consumer wrote it meanwhile) is an IntegrityError; a fault row's
  is not (``Writes``).
"""

from __future__ import annotations

import functools

import sqlalchemy as sa

from consumer.apply_rules import InstanceRow
from consumer.db import bulk
from consumer.db import engine as db_engine
from consumer.db.tables import faults, hosts, instances, journal
from consumer.fold import FaultRow, HostRow, JournalRow, Writes, newest_words

_CHUNK = 500
_ROW_FIELDS = InstanceRow._fields
# InstanceRow's fields, as columns in the same order: rows are built from the tuples.
_ROW_COLUMNS = tuple(instances.c[name] for name in _ROW_FIELDS)
_OCCURRED_AT = _ROW_FIELDS.index("event_occurred_at")
_HOST_COLUMNS = tuple(hosts.c[name] for name in HostRow._fields)
_JOURNAL_FIELDS = JournalRow._fields
_FAULT_FIELDS = FaultRow._fields


class PortableTransaction:
    def __init__(self, conn: sa.Connection):
        self._conn = conn

    def journaled(self, keys: list[tuple[str, int, int]]) -> set:
        """On PostgreSQL in one statement of fixed shape, elsewhere in one query per
        500 sequence numbers."""
        conn = self._conn
        if not keys:
            return set()
        if conn.dialect.name == "postgresql":
            return bulk.present_keys(conn, journal, keys)
        by_host: dict[str, list[int]] = {}
        for host, _epoch, seq in keys:
            by_host.setdefault(host, []).append(seq)
        seen = set()
        for group in _host_groups(by_host):
            where = sa.or_(*(sa.and_(journal.c.host == host, journal.c.seq.in_(seqs))
                             for host, seqs in group))
            seen.update(conn.execute(
                sa.select(journal.c.host, journal.c.epoch, journal.c.seq).where(where)).all())
        return seen & set(keys)

    def load(self, uuids: set[str], inventory_hosts: set[str], host_names: list[str]
             ) -> tuple[dict[str, InstanceRow], dict[str, HostRow]]:
        conn = self._conn
        rows: dict[str, InstanceRow] = {}
        if conn.dialect.name == "postgresql":
            if uuids:
                rows.update(_rows(conn.execute(
                    _rows_by_uuid(), {"uuids": bulk.array_literal(sorted(uuids))})))
        else:
            for chunk in _chunks(sorted(uuids)):
                rows.update(_select_rows(conn, instances.c.uuid.in_(chunk)))
        for host in sorted(inventory_hosts):
            rows.update(_select_rows(conn, sa.and_(instances.c.host == host,
                                                   instances.c.deleted == sa.false())))
        host_rows = {}
        if host_names:
            for values in conn.execute(_hosts_by_name(), {"names": host_names}):
                host_rows[values[0]] = HostRow(*values)
        return rows, host_rows

    def last_words(self, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
        if not wanted:
            return {}
        wanted_hosts = sorted({host for _, host in wanted})
        said_rows = []
        for chunk in _chunks(sorted({uuid for uuid, _ in wanted})):
            said_rows += self._conn.execute(
                sa.select(journal.c.instance_uuid, journal.c.host, journal.c.epoch,
                          journal.c.seq)
                .where(journal.c.instance_uuid.in_(chunk),
                       journal.c.host.in_(wanted_hosts))).all()
        return newest_words(said_rows, wanted)

    def write(self, writes: Writes) -> None:
        conn = self._conn
        for host, epoch in writes.start_over:
            conn.execute(instances.update().where(
                instances.c.host == host, instances.c.deleted == sa.true(),
                instances.c.epoch > epoch).values(epoch=epoch, seq=0))
        bulk.insert(conn, journal, [dict(zip(_JOURNAL_FIELDS, (
            r.host, r.epoch, r.seq, r.event_type, r.instance_uuid, r.outcome, r.occurred_at,
            r.applied_at))) for r in writes.journal])
        bulk.insert(conn, instances, _instance_values(writes.new_instances, writes.applied_at))
        bulk.overwrite(conn, instances,
                       _instance_values(writes.changed_instances, writes.applied_at))
        bulk.insert(conn, hosts, [_host_values(r) for r in writes.new_hosts])
        bulk.overwrite(conn, hosts, [_host_values(r) for r in writes.changed_hosts])
        if writes.faults:
            bulk.insert_missing(conn, faults, [dict(zip(_FAULT_FIELDS, r))
                                               for r in writes.faults])


def _instance_values(rows: list[InstanceRow], applied_at) -> list[dict]:
    naive_utc = db_engine.naive_utc
    out = []
    for row in rows:
        # A shallow copy: the row's fields are plain values (asdict would deep-copy each).
        values = {f: getattr(row, f) for f in _ROW_FIELDS}
        values["event_occurred_at"] = naive_utc(row.event_occurred_at)
        values["applied_at"] = applied_at
        out.append(values)
    return out


def _host_values(row: HostRow) -> dict:
    return {c.name: getattr(row, c.name) for c in _HOST_COLUMNS}


def _select_rows(conn, where) -> dict[str, InstanceRow]:
    """The rows ``where`` selects, locked until the transaction ends."""
    return _rows(conn.execute(_locking_select(where)))


def _locking_select(where):
    return sa.select(*_ROW_COLUMNS).where(where).order_by(instances.c.uuid).with_for_update()


@functools.lru_cache(maxsize=None)
def _rows_by_uuid():
    """PostgreSQL: the rows whose uuid is in the array ``:uuids``, locked; built once."""
    return _locking_select(bulk.any_of(instances.c.uuid, "uuids"))


@functools.lru_cache(maxsize=None)
def _hosts_by_name():
    """The hosts rows named in ``:names``, locked; built once."""
    return (sa.select(*_HOST_COLUMNS)
            .where(hosts.c.name.in_(sa.bindparam("names", expanding=True)))
            .order_by(hosts.c.name).with_for_update())


def _rows(result) -> dict[str, InstanceRow]:
    rows = {}
    for values in result:
        values = list(values)
        values[_OCCURRED_AT] = db_engine.aware(values[_OCCURRED_AT])
        rows[values[0]] = InstanceRow(*values)
    return rows


def _host_groups(by_host: dict[str, list[int]]):
    """``(host, seqs)`` pairs in groups of about _CHUNK sequence numbers in all."""
    group, size = [], 0
    for host, seqs in by_host.items():
        for chunk in _chunks(seqs):
            if group and size + len(chunk) > _CHUNK:
                yield group
                group, size = [], 0
            group.append((host, chunk))
            size += len(chunk)
    if group:
        yield group


def _chunks(items: list):
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]
