"""Applies batches of notifications to the database, one transaction per batch.

A batch is committed whole or not at all. Messages already in the journal are
skipped, and ``apply_rules`` decides every change, so a batch can be applied twice,
or by two consumers at once, with the effect of once. A conflict between competing
consumers (both inserting the same new row) rolls the batch back and retries it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import time
from collections import Counter

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from lifecycle_common import timeutil
from lifecycle_common.power_state import PowerState
from lifecycle_common.wire import Notification
from lifecycle_common.wire.payloads import (
    HostHeartbeatPayload, HostInventoryPayload, InstanceLifecyclePayload)
from consumer import apply_rules
from consumer.apply_rules import InstanceRow, Observation, Outcome
from consumer.db import bulk, failures
from consumer.db import engine as db_engine
from consumer.db.failures import Failure
from consumer.db.tables import hosts, instances, journal
from consumer.errors import BatchRejected, DatabaseUnavailable

LOG = logging.getLogger(__name__)

_CONFLICT_RETRIES = 5
# Transitions that say the guest runs on the event's host (see apply_rules.is_newer).
RUNS_HERE = frozenset({"started", "resumed"})
_CHUNK = 500
_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(InstanceRow))


@dataclasses.dataclass
class BatchResult:
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    duplicates: int = 0
    heartbeats: int = 0
    applied_at: datetime.datetime | None = None
    # (event_type, occurred_at in seconds since the epoch) of each message applied:
    # for counting by type and timing callback -> commit.
    applied: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    # Seconds each host that beat in the batch is ahead of this consumer's clock (the
    # moment its last heartbeat says, less when it arrived): reported, never decided on.
    clock_offsets: dict[str, float] = dataclasses.field(default_factory=dict)


class Store:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def apply_batch(self, notes: list[Notification]) -> BatchResult:
        """Apply ``notes`` in one transaction. Raises DatabaseUnavailable (hold the
        batch and retry later: nothing was applied) or BatchRejected (the database
        refuses the content, and still answers); anything else a hostile batch makes
        the code below raise propagates as it is, and the batch is not applied."""
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            try:
                with self.engine.begin() as conn:
                    return _apply(conn, notes, timeutil.utcnow())
            except sa_exc.DBAPIError as exc:
                failure = failures.classify(exc)
                if failures.discard_pool(exc):
                    self._discard_pool(exc)
                raced = failure is Failure.CONFLICT or isinstance(exc, sa_exc.IntegrityError)
                if raced and attempt < _CONFLICT_RETRIES:
                    LOG.info("batch of %d conflicted with another consumer (%s); retry %d",
                             len(notes), exc.orig, attempt)
                    time.sleep(0.01 * attempt)
                    continue
                if failure is not Failure.REFUSED:  # unreachable, or still losing races
                    raise DatabaseUnavailable(_first_line(exc.orig)) from exc
                if not self.database_answers():
                    raise DatabaseUnavailable(
                        f"{_first_line(exc.orig)} (and the database does not answer)") from exc
                raise BatchRejected(_first_line(exc.orig)) from exc
            except sa_exc.TimeoutError as exc:  # no pooled connection came free
                raise DatabaseUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    def database_answers(self) -> bool:
        """Whether the database answers a trivial query on a connection of its own: an
        error the classification does not know is refused only while it does."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            LOG.warning("the database does not answer: %s", exc)
            return False

    def prune_journal(self, older_than: float, limit: int = 10000) -> int:
        """Delete up to ``limit`` journal rows applied more than ``older_than`` seconds
        ago. Redeliveries older than that are still kept from moving an instance
        backwards by the (epoch, seq) rule; they just are no longer counted as duplicates."""
        cutoff = db_engine.naive_utc(timeutil.utcnow() - datetime.timedelta(seconds=older_than))
        try:
            with self.engine.begin() as conn:
                keys = conn.execute(
                    sa.select(journal.c.host, journal.c.epoch, journal.c.seq)
                    .where(journal.c.applied_at < cutoff).limit(limit)).all()
                for host, epoch, seqs in _group_keys(keys):
                    conn.execute(journal.delete().where(
                        journal.c.host == host, journal.c.epoch == epoch, journal.c.seq.in_(seqs)))
        except sa_exc.DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return len(keys)

    def count_hosts(self) -> dict[str, int]:
        """How many hosts are up and how many down."""
        try:
            with self.engine.connect() as conn:
                counts = dict(conn.execute(
                    sa.select(hosts.c.status, sa.func.count()).group_by(hosts.c.status)).all())
        except sa_exc.DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return {"up": counts.get("up", 0), "down": counts.get("down", 0)}

    def mark_silent_hosts_down(self, down_after: float) -> list[str]:
        """Mark ``down`` every host whose last heartbeat is older than ``down_after``."""
        now = timeutil.utcnow()
        cutoff = db_engine.naive_utc(now - datetime.timedelta(seconds=down_after))
        last_seen = sa.func.coalesce(hosts.c.last_heartbeat_at, hosts.c.updated_at)
        try:
            with self.engine.begin() as conn:
                names = [r.name for r in conn.execute(
                    sa.select(hosts.c.name).where(hosts.c.status == "up", last_seen < cutoff))]
                if names:
                    conn.execute(hosts.update().where(hosts.c.name.in_(names))
                                 .values(status="down", updated_at=db_engine.naive_utc(now)))
        except sa_exc.DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return names

    def _unavailable(self, exc: sa_exc.DBAPIError) -> DatabaseUnavailable:
        """What ``exc`` means to the maintenance and liveness queries: the database is
        unavailable; the pool replaced first where ``exc`` says so."""
        if failures.discard_pool(exc):
            self._discard_pool(exc)
        return DatabaseUnavailable(_first_line(exc.orig))

    def _discard_pool(self, exc: sa_exc.DBAPIError) -> None:
        """Replace every pooled connection: the server said it is read-only (an old
        primary after a failover) or a connection was lost, and a pre-ping would not
        tell (a read-only server answers it). New ones go through the URL's host list
        (target_session_attrs=read-write)."""
        LOG.warning("replacing the database connections after: %s", _first_line(exc.orig))
        self.engine.dispose()


def _apply(conn: sa.Connection, notes: list[Notification], now: datetime.datetime) -> BatchResult:
    result = BatchResult(applied_at=now)
    sequenced = {}
    heartbeats = []
    for note in notes:
        p = note.payload
        if isinstance(p, HostHeartbeatPayload):
            heartbeats.append(p)
        else:
            key = (p.host, p.epoch, p.seq)
            if key in sequenced:
                result.duplicates += 1
            sequenced[key] = note
    seen = _journaled(conn, list(sequenced))
    result.duplicates += len(seen)
    fresh = [sequenced[k] for k in _in_order([k for k in sequenced if k not in seen],
                                            sequenced)]

    _start_over_deleted(conn, fresh)
    original = _load_instances(conn, fresh)
    current = dict(original)
    words = _last_words(conn, fresh, original)
    applied_at = db_engine.naive_utc(now)
    journal_rows = []
    counted = []  # what sets each host's position (not what came before a new state)
    for note in fresh:
        p = note.payload
        if isinstance(p, HostInventoryPayload) and p.new_state:
            _start_over(current, p.host, p.epoch)
            counted = [q for q in counted if q.host != p.host]
        counted.append(p)
        occurred_at = timeutil.parse(p.occurred_at)
        outcome, uuid = _fold(current, note, occurred_at, words)
        result.outcomes[outcome] += 1
        if outcome is Outcome.APPLIED:
            result.applied.append((note.event_type, occurred_at.timestamp()))
        journal_rows.append({
            "host": p.host, "epoch": p.epoch, "seq": p.seq, "event_type": note.event_type,
            "instance_uuid": uuid, "outcome": outcome.value,
            "occurred_at": db_engine.naive_utc(occurred_at), "applied_at": applied_at})

    _write_instances(conn, original, current, applied_at)
    # A key another consumer journaled meanwhile is an IntegrityError: tried again.
    bulk.insert(conn, journal, journal_rows)
    restarted = {p.host for p in counted
                 if isinstance(p, HostInventoryPayload) and p.new_state}
    result.clock_offsets = _update_hosts(conn, counted, heartbeats, now, restarted)
    result.heartbeats = len(heartbeats)
    return result


def _in_order(keys: list[tuple[str, int, int]], notes: dict) -> list[tuple[str, int, int]]:
    """The batch's keys in the order they arrived, except that each host's own are in
    its order: between hosts, arrival decides (no clock is compared); within a host,
    ``(epoch, seq)``, where a host that starts over with a new state (an inventory
    with new_state) puts what it said before it first, whatever its epochs."""
    by_host: dict[str, list] = {}
    for key in keys:
        by_host.setdefault(key[0], []).append(key)
    ordered = {}
    for host, own in by_host.items():
        restart = next((i for i, k in enumerate(own) if _is_new_state(notes[k])), None)
        if restart is None:
            ordered[host] = iter(sorted(own))
        else:
            ordered[host] = iter(sorted(own[:restart]) + sorted(own[restart:]))
    return [next(ordered[key[0]]) for key in keys]


def _is_new_state(note: Notification) -> bool:
    p = note.payload
    return isinstance(p, HostInventoryPayload) and p.new_state


def _start_over(current: dict[str, InstanceRow], host: str, epoch: int) -> None:
    """A host starts over with a new state (its state directory was new or lost): its
    epoch is its newest, whatever its value. Its rows marked with a greater epoch (the
    counters of an earlier state, started with a clock that was ahead) yield to it."""
    moved = 0
    for uuid, row in current.items():
        if row is not None and row.host == host and row.epoch > epoch:
            current[uuid] = dataclasses.replace(row, epoch=epoch, seq=0)
            moved += 1
    if moved:
        LOG.warning("host %s starts over with a new state at epoch %d, below the epoch of "
                    "%d of its instances (an earlier state of it started with a clock "
                    "ahead): they now yield to its new epoch", host, epoch, moved)


def _start_over_deleted(conn, notes: list[Notification]) -> None:
    """``_start_over`` for the deleted rows of a host starting over, which the batch
    does not load."""
    for note in notes:
        p = note.payload
        if _is_new_state(note):
            conn.execute(instances.update().where(
                instances.c.host == p.host, instances.c.deleted == sa.true(),
                instances.c.epoch > p.epoch).values(epoch=p.epoch, seq=0))


def _last_words(conn, notes: list[Notification], rows: dict[str, InstanceRow]) -> dict:
    """For each instance a note is about, owned by another host than the note's: the
    newest ``(epoch, seq)`` the note's host said about it, from the journal."""
    wanted: set[tuple[str, str]] = set()
    for note in notes:
        p = note.payload
        if isinstance(p, InstanceLifecyclePayload):
            uuids = (p.uuid,)
        elif isinstance(p, HostInventoryPayload):
            uuids = tuple(e.uuid for e in p.instances)
        else:
            continue
        for uuid in uuids:
            row = rows.get(uuid)
            if row is not None and row.host != p.host:
                wanted.add((uuid, p.host))
    words: dict[tuple[str, str], tuple[int, int]] = {}
    if not wanted:
        return words
    wanted_hosts = sorted({host for _, host in wanted})
    for chunk in _chunks(sorted({uuid for uuid, _ in wanted})):
        for uuid, host, epoch, seq in conn.execute(
                sa.select(journal.c.instance_uuid, journal.c.host, journal.c.epoch,
                          journal.c.seq)
                .where(journal.c.instance_uuid.in_(chunk), journal.c.host.in_(wanted_hosts))):
            if (uuid, host) in wanted:
                _said(words, uuid, host, epoch, seq)
    return words


def _said(words: dict, uuid: str, host: str, epoch: int, seq: int) -> None:
    key = (uuid, host)
    if key not in words or (epoch, seq) > words[key]:
        words[key] = (epoch, seq)


def _first_line(error: BaseException) -> str:
    """A driver's message without the SQL and parameters some drivers append."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _journaled(conn, keys: list[tuple[str, int, int]]) -> set:
    """The ``keys`` already in the journal: on PostgreSQL in one statement of fixed
    shape, elsewhere in one query per 500 sequence numbers."""
    if conn.dialect.name == "postgresql":
        return bulk.present_keys(conn, journal, keys) if keys else set()
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


def _load_instances(conn, notes: list[Notification]) -> dict[str, InstanceRow]:
    uuids = set()
    inventory_hosts = set()
    for note in notes:
        p = note.payload
        if isinstance(p, InstanceLifecyclePayload):
            uuids.add(p.uuid)
        elif isinstance(p, HostInventoryPayload):
            uuids.update(e.uuid for e in p.instances)
            inventory_hosts.add(p.host)
    rows = {}
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
    return rows


# InstanceRow's fields, as columns in the same order: rows are built from the tuples.
_ROW_COLUMNS = tuple(instances.c[name] for name in _ROW_FIELDS)
_OCCURRED_AT = _ROW_FIELDS.index("event_occurred_at")


def _select_rows(conn, where) -> dict[str, InstanceRow]:
    """The rows ``where`` selects, locked until the transaction ends."""
    return _rows(conn.execute(_locking_select(where)))


def _locking_select(where):
    return sa.select(*_ROW_COLUMNS).where(where).order_by(instances.c.uuid).with_for_update()


@functools.lru_cache(maxsize=None)
def _rows_by_uuid():
    """PostgreSQL: the rows whose uuid is in the array ``:uuids``, locked; built once."""
    return _locking_select(bulk.any_of(instances.c.uuid, "uuids"))


def _rows(result) -> dict[str, InstanceRow]:
    rows = {}
    for values in result:
        values = list(values)
        values[_OCCURRED_AT] = db_engine.aware(values[_OCCURRED_AT])
        rows[values[0]] = InstanceRow(*values)
    return rows


def _fold(current: dict[str, InstanceRow], note: Notification,
          occurred_at: datetime.datetime, words: dict) -> tuple[Outcome, str | None]:
    """Apply one notification to the in-memory rows; return its outcome. ``words``
    (see ``_last_words``) learns what the note's host said."""
    p = note.payload
    if isinstance(p, InstanceLifecyclePayload):
        if p.transition == "ignored":
            return Outcome.IGNORED, p.uuid
        obs = Observation(
            uuid=p.uuid, name=p.name, host=p.host, epoch=p.epoch, seq=p.seq,
            occurred_at=occurred_at, event_type=note.event_type,
            power_state=p.power_state, deleted=p.transition == "undefined",
            runs_here=p.transition in RUNS_HERE)
        current[p.uuid], outcome = apply_rules.apply(
            current.get(p.uuid), obs, words.get((p.uuid, p.host)))
        _said(words, p.uuid, p.host, p.epoch, p.seq)
        return outcome, p.uuid
    # An inventory: the truth for its host.
    listed = set()
    for entry in p.instances:
        listed.add(entry.uuid)
        obs = Observation(
            uuid=entry.uuid, name=entry.name, host=p.host, epoch=p.epoch, seq=p.seq,
            occurred_at=occurred_at, event_type=note.event_type,
            power_state=entry.power_state, deleted=False,
            runs_here=entry.power_state == PowerState.RUNNING.value)
        current[entry.uuid], _ = apply_rules.apply(
            current.get(entry.uuid), obs, words.get((entry.uuid, p.host)))
        _said(words, entry.uuid, p.host, p.epoch, p.seq)
    for uuid, row in list(current.items()):
        if uuid not in listed and row is not None:
            gone = apply_rules.vanished(row, p.host, p.epoch, p.seq, occurred_at)
            if gone is not None:
                current[uuid] = gone
    return Outcome.APPLIED, None


def _write_instances(conn, original: dict, current: dict, applied_at: datetime.datetime) -> None:
    """Write the rows ``apply_rules`` changed: new ones inserted (one that another
    consumer inserted meanwhile is an IntegrityError, and the batch is tried again),
    the others, locked since they were read, rewritten in one multi-row upsert."""
    naive_utc = db_engine.naive_utc
    inserts, updates = [], []
    for uuid, row in current.items():
        if row is None or row == original.get(uuid):
            continue
        # A shallow copy: the row's fields are plain values (asdict would deep-copy each).
        values = {f: getattr(row, f) for f in _ROW_FIELDS}
        values["event_occurred_at"] = naive_utc(row.event_occurred_at)
        values["applied_at"] = applied_at
        (updates if uuid in original else inserts).append(values)
    bulk.insert(conn, instances, inserts)
    bulk.overwrite(conn, instances, updates)


def _update_hosts(conn, payloads: list, heartbeats: list[HostHeartbeatPayload],
                  now: datetime.datetime, restarted: set[str]) -> dict[str, float]:
    """Each host's position (the newest ``(epoch, seq)`` it was heard at) and, from its
    heartbeats, its liveness: a heartbeat's arrival here, on this consumer's clock, is
    what keeps a host up (never the moment the host's clock wrote in it). A heartbeat
    of an older epoch than the host's (a redelivery from before a restart) changes
    nothing; within an epoch the last to arrive wins. ``restarted``: hosts that started
    over with a new state in this batch: their position is set, even lower. Returns
    each beating host's clock offset."""
    stamp = db_engine.naive_utc(now)
    newest: dict[str, tuple[int, int]] = {}
    for p in payloads:
        newest[p.host] = max(newest.get(p.host, (0, 0)), (p.epoch, p.seq))
    beats: dict[str, HostHeartbeatPayload] = {}
    for hb in heartbeats:
        position = (hb.epoch, hb.last_seq)
        if hb.host in restarted and hb.epoch != newest[hb.host][0]:
            continue  # from before the host started over
        newest[hb.host] = max(newest.get(hb.host, (0, 0)), position)
        if hb.host not in beats or hb.epoch >= beats[hb.host].epoch:
            beats[hb.host] = hb  # the last to arrive of the newest epoch
    if not newest:
        return {}
    names = sorted(newest)
    existing = {r["name"]: r for r in conn.execute(_hosts_by_name(), {"names": names}).mappings()}
    inserts, updates = [], []
    offsets = {}
    for name in names:
        row = existing.get(name)
        epoch, seq = newest[name]
        if row is None:
            values = {"name": name, "status": "up", "agent_status": "running",
                      "libvirt_connected": True, "last_heartbeat_at": None,
                      "epoch": epoch, "last_seq": seq, "clock_offset": None}
        else:
            values = dict(row)
            if name in restarted or (epoch, seq) > (row["epoch"], row["last_seq"]):
                values.update(epoch=epoch, last_seq=seq)
        values["updated_at"] = stamp
        hb = beats.get(name)
        if hb is not None and hb.epoch >= values["epoch"]:
            offset = (timeutil.parse(hb.occurred_at) - now).total_seconds()
            offsets[name] = offset
            values.update(last_heartbeat_at=stamp, agent_status=hb.status,
                          libvirt_connected=hb.libvirt_connected, clock_offset=offset,
                          status="down" if hb.status == "stopping" else "up")
        (inserts if row is None else updates).append(values)
    bulk.insert(conn, hosts, inserts)
    bulk.overwrite(conn, hosts, updates)
    return offsets


@functools.lru_cache(maxsize=None)
def _hosts_by_name():
    """The hosts rows named in ``:names``, locked; built once."""
    return (sa.select(hosts).where(hosts.c.name.in_(sa.bindparam("names", expanding=True)))
            .order_by(hosts.c.name).with_for_update())


def _group_keys(keys):
    groups: dict[tuple[str, int], list[int]] = {}
    for host, epoch, seq in keys:
        groups.setdefault((host, epoch), []).append(seq)
    for (host, epoch), seqs in groups.items():
        for chunk in _chunks(seqs):
            yield host, epoch, chunk


def _chunks(items: list):
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]
