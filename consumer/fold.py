"""The fold of a batch of notifications into the rows to write. Pure: no I/O, table-tested.

``Store`` reads what the fold needs and writes what it returns, in one transaction:
1. ``Batch(notes)`` sorts the notes out (heartbeats; one note per ``(host, epoch, seq)``
   key, a repeat within the batch counted as a duplicate);
2. the store reads which of ``batch.keys`` the journal holds (``fresh`` are the others),
   the instance rows ``instances_to_load(fresh)`` names (locked), the host rows
   ``batch.host_names(fresh)`` names (locked), and the last words
   ``words_wanted(fresh, rows)`` asks for (from the journal);
3. ``fold(...)`` returns ``Writes``: the journal rows, the instance and host rows to
   insert and to overwrite, the deleted rows to renumber, the fault rows, and the
   ``BatchResult``.

``apply_rules`` decides each instance's change; this module decides the order in which
the batch's notes meet the rows, and each host's position and liveness.

Faults (a watchdog, an I/O error, a reboot...) move neither an instance's state nor its
position (``apply_rules``), and leave their own marks: each fresh one, and each panic
(a lifecycle event ``instance.crashed`` of libvirt's CRASHED), is a ``faults`` row; a
reboot adds its count to ``reboots``; a watchdog, an I/O error, a control error, a
memory failure or a panic may become the row's ``last_fault``
(``apply_rules.replaces_last_fault``). Only they pay for JSON: a lifecycle event's cost
is its ``state_reason``, a lookup.

``fold`` takes 5.5 us of CPU per event of benchmarks/apply.py's batches (``python -m
benchmarks.micro_store fold``), 8.5 before its times were made by ``parse_utc`` and
``as_naive_utc`` and its records by ``apply_rules.record_maker``. The state's reason
and the checks for faults added about 0.3 us of it (``fold`` itself 3.7 to 4.4 us
against 3.6 to 3.9 before, runs alternated on this project's 2-core machine).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
from collections import Counter
from typing import NamedTuple, Optional

from lifecycle_common import timeutil
from lifecycle_common.power_state import PowerState
from lifecycle_common.wire import Notification
from lifecycle_common.wire import vocabulary
from lifecycle_common.wire.payloads import (
    FAULT_PAYLOAD_CLASSES, HostHeartbeatPayload, HostInventoryPayload,
    InstanceLifecyclePayload, fault_fields)
from lifecycle_common.wire.limits import INT64_MAX
from lifecycle_common.wire.vocabulary import RUNS_HERE
from consumer import apply_rules, state_reasons
from consumer.apply_rules import (
    APPLIED, IGNORED, InstanceRow, Observation, Outcome, new_observation, record_maker)

LOG = logging.getLogger(__name__)

# The transitions the fold tells apart, as plain strings (a str Enum member compares
# slower), and what says an instance.crashed is a panic: libvirt's CRASHED event (a
# STOPPED one of a crashed or failed emulator is not: the guest did not panic).
_IGNORED = vocabulary.Transition.IGNORED.value
_UNDEFINED = vocabulary.Transition.UNDEFINED.value
_CRASHED = vocabulary.Transition.CRASHED.value
_LIBVIRT_CRASHED = "CRASHED"  # libvirt's name of VIR_DOMAIN_EVENT_CRASHED
_PANIC = vocabulary.PANIC_EVENT_TYPE
_REBOOTED = vocabulary.Fault.REBOOTED.event_type
_LAST_FAULT_TYPES = vocabulary.LAST_FAULT_TYPES
# The payloads about one instance (its uuid): a lifecycle event first, the usual case.
_INSTANCE_PAYLOADS = (InstanceLifecyclePayload, *FAULT_PAYLOAD_CLASSES)

Key = tuple[str, int, int]  # (host, epoch, seq)
_OUTCOME_TEXT = {outcome: outcome.value for outcome in Outcome}


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
    # Occurrences (the sum of their counts) of the faults newly applied, by event type,
    # whatever their rows' outcome: the batch's ``faults`` rows, panics among them.
    faults: Counter = dataclasses.field(default_factory=Counter)


class HostRow(NamedTuple):
    """A ``hosts`` row; timestamps naive UTC, as stored."""
    name: str
    status: str
    agent_status: str
    libvirt_connected: bool
    last_heartbeat_at: Optional[datetime.datetime]
    epoch: int
    last_seq: int
    updated_at: datetime.datetime
    clock_offset: Optional[float]


class JournalRow(NamedTuple):
    """A ``journal`` row; timestamps naive UTC, as stored. (Records are NamedTuples, as
    in ``apply_rules``: one or more per event.)"""
    host: str
    epoch: int
    seq: int
    event_type: str
    instance_uuid: Optional[str]
    outcome: str
    occurred_at: datetime.datetime
    applied_at: datetime.datetime


_new_journal_row = record_maker(JournalRow)


class FaultRow(NamedTuple):
    """A ``faults`` row: one fault notification, or one panic; timestamps naive UTC."""
    host: str
    epoch: int
    seq: int
    instance_uuid: str
    event_type: str
    occurred_at: datetime.datetime
    first_occurred_at: datetime.datetime
    count: int
    fields: str   # JSON: the fault's own fields (payloads.fault_fields)
    applied_at: datetime.datetime


@dataclasses.dataclass
class Writes:
    """What one batch writes, in this order: ``start_over`` (for each ``(host,
    epoch)``, that host's deleted rows of a greater epoch renumbered ``(epoch, 0)``),
    the journal rows, the new instance rows and those overwritten (every row written
    takes ``applied_at``), the new host rows and those overwritten, then the fault rows
    (a key the table holds already is left as it is: the same notification, its
    journal row pruned first)."""
    start_over: list[tuple[str, int]]
    journal: list[JournalRow]
    new_instances: list[InstanceRow]
    changed_instances: list[InstanceRow]
    new_hosts: list[HostRow]
    changed_hosts: list[HostRow]
    applied_at: datetime.datetime  # naive UTC
    result: BatchResult
    faults: list[FaultRow] = dataclasses.field(default_factory=list)


class Batch:
    """A batch's notes sorted out: its heartbeats, and its sequenced notes (events and
    inventories) one per key, the last to arrive of each; a key repeated within the
    batch is a duplicate."""

    def __init__(self, notes: list[Notification]):
        self.heartbeats: list[HostHeartbeatPayload] = []
        self.sequenced: dict[Key, Notification] = {}
        self.repeated = 0
        self._fresh: tuple[frozenset, list[Notification]] | None = None
        for note in notes:
            p = note.payload
            if isinstance(p, HostHeartbeatPayload):
                self.heartbeats.append(p)
            else:
                key = (p.host, p.epoch, p.seq)
                if key in self.sequenced:
                    self.repeated += 1
                self.sequenced[key] = note

    @property
    def keys(self) -> list[Key]:
        return list(self.sequenced)

    def fresh(self, journaled: set[Key]) -> list[Notification]:
        """The sequenced notes the journal does not hold, in the order they apply in
        (``in_order``)."""
        journaled = frozenset(journaled)
        if self._fresh is None or self._fresh[0] != journaled:
            keys = [k for k in self.sequenced if k not in journaled]
            self._fresh = (journaled, [self.sequenced[k] for k in in_order(keys, self.sequenced)])
        return list(self._fresh[1])

    def host_names(self, fresh: list[Notification]) -> list[str]:
        """The hosts whose rows the fold may write: those of ``fresh`` and of the
        heartbeats."""
        return sorted({n.payload.host for n in fresh} | {hb.host for hb in self.heartbeats})


def in_order(keys: list[Key], notes: dict[Key, Notification]) -> list[Key]:
    """The batch's keys in the order they arrived, except that each host's own are in
    its order: between hosts, arrival decides (no clock is compared); within a host,
    ``(epoch, seq)``, where a host that starts over with a new state (an inventory
    with new_state) puts what it said before it first, whatever its epochs."""
    by_host: dict[str, list] = {}
    for key in keys:
        by_host.setdefault(key[0], []).append(key)
    starting_over = {k[0] for k in keys if _is_new_state(notes[k])}
    ordered = {}
    for host, own in by_host.items():
        restart = None
        if host in starting_over:
            restart = next(i for i, k in enumerate(own) if _is_new_state(notes[k]))
        if restart is None:
            ordered[host] = iter(sorted(own))
        else:
            ordered[host] = iter(sorted(own[:restart]) + sorted(own[restart:]))
    return [next(ordered[key[0]]) for key in keys]


def instances_to_load(fresh: list[Notification]) -> tuple[set[str], set[str]]:
    """What the fold of ``fresh`` reads: the rows of these uuids, and every row not
    deleted of these hosts (an inventory is the truth for its host)."""
    uuids: set[str] = set()
    inventory_hosts: set[str] = set()
    for note in fresh:
        p = note.payload
        if isinstance(p, _INSTANCE_PAYLOADS):
            uuids.add(p.uuid)
        elif isinstance(p, HostInventoryPayload):
            uuids.update(e.uuid for e in p.instances)
            inventory_hosts.add(p.host)
    return uuids, inventory_hosts


def words_wanted(fresh: list[Notification], rows: dict[str, InstanceRow]) -> set[tuple[str, str]]:
    """The ``(uuid, host)`` pairs whose last word (the newest ``(epoch, seq)`` the host
    said about the instance, from the journal) the fold needs: a note about an instance
    another host owns."""
    wanted: set[tuple[str, str]] = set()
    for note in fresh:
        p = note.payload
        if isinstance(p, _INSTANCE_PAYLOADS):
            uuids = (p.uuid,)
        elif isinstance(p, HostInventoryPayload):
            uuids = tuple(e.uuid for e in p.instances)
        else:
            continue
        for uuid in uuids:
            row = rows.get(uuid)
            if row is not None and row.host != p.host:
                wanted.add((uuid, p.host))
    return wanted


def said(words: dict, uuid: str, host: str, epoch: int, seq: int) -> None:
    """Record in ``words`` that ``host`` said ``(epoch, seq)`` about ``uuid`` (the
    newest counts)."""
    key = (uuid, host)
    if key not in words or (epoch, seq) > words[key]:
        words[key] = (epoch, seq)


def newest_words(said_rows, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """The last words (see ``words_wanted``) from the journal's ``(uuid, host, epoch,
    seq)`` rows: for each wanted (uuid, host), the newest ``(epoch, seq)``."""
    words: dict[tuple[str, str], tuple[int, int]] = {}
    for uuid, host, epoch, seq in said_rows:
        if (uuid, host) in wanted:
            said(words, uuid, host, epoch, seq)
    return words


def fold(batch: Batch, journaled: set[Key], rows: dict[str, InstanceRow],
         words: dict[tuple[str, str], tuple[int, int]], hosts: dict[str, HostRow],
         now: datetime.datetime) -> Writes:
    """What applying ``batch`` writes, given the keys the journal holds, the rows
    ``instances_to_load`` names as they are, the last words ``words_wanted`` asks for,
    the host rows ``batch.host_names`` names, and ``now`` (aware)."""
    journaled = journaled & batch.sequenced.keys()
    result = BatchResult(applied_at=now, duplicates=batch.repeated + len(journaled),
                         heartbeats=len(batch.heartbeats))
    fresh = batch.fresh(journaled)
    start_over = [(n.payload.host, n.payload.epoch) for n in fresh if _is_new_state(n)]
    original = _started_over_deleted(rows, start_over)
    current: dict[str, Optional[InstanceRow]] = dict(original)
    words = dict(words)
    applied_at = naive_utc(now)
    journal_rows = []
    fault_rows: list[FaultRow] = []
    counted = []  # what sets each host's position (not what came before a new state)
    outcomes = {outcome: 0 for outcome in Outcome}
    applied = result.applied
    for note in fresh:
        p = note.payload
        if isinstance(p, HostInventoryPayload) and p.new_state:
            _start_over(current, p.host, p.epoch)
            counted = [q for q in counted if q.host != p.host]
        counted.append(p)
        occurred_at = parse_utc(p.occurred_at)  # aware, in UTC
        outcome, uuid = fold_note(current, note, occurred_at, words, fault_rows, applied_at)
        outcomes[outcome] += 1
        if outcome is APPLIED:
            applied.append((note.event_type, occurred_at.timestamp()))
        journal_rows.append(_new_journal_row((
            p.host, p.epoch, p.seq, note.event_type, uuid, _OUTCOME_TEXT[outcome],
            as_naive_utc(occurred_at), applied_at)))
    result.outcomes.update({o: n for o, n in outcomes.items() if n})
    for f in fault_rows:
        result.faults[f.event_type] += f.count

    new_instances, changed_instances = [], []
    for uuid, row in current.items():
        if row is not None and row != original.get(uuid):
            (changed_instances if uuid in original else new_instances).append(row)
    restarted = {p.host for p in counted if isinstance(p, HostInventoryPayload) and p.new_state}
    new_hosts, changed_hosts, result.clock_offsets = _hosts(
        counted, batch.heartbeats, hosts, now, restarted)
    return Writes(start_over, journal_rows, new_instances, changed_instances,
                  new_hosts, changed_hosts, applied_at, result, fault_rows)


def fold_note(current: dict[str, Optional[InstanceRow]], note: Notification,
              occurred_at: datetime.datetime, words: dict, faults: list[FaultRow],
              applied_at: datetime.datetime) -> tuple[Outcome, str | None]:
    """Apply one notification to the in-memory rows; return its outcome and the uuid it
    is about (None for an inventory). ``words`` learns what the note's host said;
    ``faults`` gets the note's ``faults`` row, if it is a fault or a panic (stamped
    ``applied_at``, naive UTC)."""
    p = note.payload
    if isinstance(p, InstanceLifecyclePayload):
        transition = p.transition
        if transition == _IGNORED:
            return IGNORED, p.uuid
        power_state = p.power_state
        # uuid, name, host, epoch, seq, occurred_at, event_type, power_state, deleted,
        # runs_here, state_reason (all of them: see apply_rules.record_maker).
        obs = new_observation((p.uuid, p.name, p.host, p.epoch, p.seq, occurred_at,
                               note.event_type, power_state, transition == _UNDEFINED,
                               transition in RUNS_HERE,
                               None if power_state is None else state_reasons.of_event(
                                   p.libvirt_event, p.libvirt_detail, p.libvirt_state,
                                   p.libvirt_reason)))
        current[p.uuid], outcome = apply_rules.apply(
            current.get(p.uuid), obs, words.get((p.uuid, p.host)))
        said(words, p.uuid, p.host, p.epoch, p.seq)
        if transition == _CRASHED and p.libvirt_event == _LIBVIRT_CRASHED:
            _panicked(current, p, occurred_at, faults, applied_at)
        return outcome, p.uuid
    if not isinstance(p, HostInventoryPayload):
        return _fold_fault(current, note, occurred_at, words, faults, applied_at)
    # An inventory: the truth for its host.
    listed = set()
    for entry in p.instances:
        listed.add(entry.uuid)
        row = current.get(entry.uuid)
        reason = None
        if row is not None and row.state_reason is not None:
            reason = state_reasons.kept_through_inventory(
                row.state_reason, row.power_state, entry.power_state, entry.libvirt_state,
                entry.libvirt_reason)
        obs = Observation(
            uuid=entry.uuid, name=entry.name, host=p.host, epoch=p.epoch, seq=p.seq,
            occurred_at=occurred_at, event_type=note.event_type,
            power_state=entry.power_state, deleted=False,
            runs_here=entry.power_state == PowerState.RUNNING.value, state_reason=reason)
        current[entry.uuid], _ = apply_rules.apply(row, obs, words.get((entry.uuid, p.host)))
        said(words, entry.uuid, p.host, p.epoch, p.seq)
    for uuid, row in list(current.items()):
        if uuid not in listed and row is not None:
            gone = apply_rules.vanished(row, p.host, p.epoch, p.seq, occurred_at)
            if gone is not None:
                current[uuid] = gone
    return APPLIED, None


def _fold_fault(current: dict[str, Optional[InstanceRow]], note: Notification,
                occurred_at: datetime.datetime, words: dict, faults: list[FaultRow],
                applied_at: datetime.datetime) -> tuple[Outcome, str]:
    """A fault: recorded (its ``faults`` row), and its marks on the instance's row (a
    reboot's count; the last fault where it is one and the owner's newest:
    ``apply_rules.replaces_last_fault``), never the row's state nor its position. An
    instance the database does not know yet gets its row, its state pending, at the
    very start of the fault's epoch ``(epoch, 0)``: every event of that host's epoch
    is newer."""
    p = note.payload
    event_type = note.event_type
    row = current.get(p.uuid)
    if row is None:
        obs = new_observation((p.uuid, p.name, p.host, p.epoch, 0, occurred_at, event_type,
                               None, False, False, None))
        row, _ = apply_rules.apply(None, obs)
    said(words, p.uuid, p.host, p.epoch, p.seq)
    fields = fault_fields(p)
    first_occurred_at = parse_utc(p.first_occurred_at)
    if event_type == _REBOOTED:  # (a BIGINT: a hostile count cannot make it refused)
        row = row._replace(reboots=min(row.reboots + p.count, INT64_MAX))
    elif event_type in _LAST_FAULT_TYPES:
        row = _with_last_fault(row, event_type, p, occurred_at, first_occurred_at, p.count,
                               fields)
    current[p.uuid] = row
    faults.append(FaultRow(p.host, p.epoch, p.seq, p.uuid, event_type,
                           as_naive_utc(occurred_at), as_naive_utc(first_occurred_at),
                           p.count, _json(fields), applied_at))
    return APPLIED, p.uuid


def _panicked(current: dict[str, Optional[InstanceRow]], p: InstanceLifecyclePayload,
              occurred_at: datetime.datetime, faults: list[FaultRow],
              applied_at: datetime.datetime) -> None:
    """A panic (libvirt's CRASHED event): a fault of its own, ``instance.crashed``
    with the reason libvirt gives (panicked, crashloaded), once."""
    fields = {"reason": p.libvirt_detail.lower()}
    row = current.get(p.uuid)
    if row is not None:
        current[p.uuid] = _with_last_fault(row, _PANIC, p, occurred_at, occurred_at, 1, fields)
    naive = as_naive_utc(occurred_at)
    faults.append(FaultRow(p.host, p.epoch, p.seq, p.uuid, _PANIC, naive, naive, 1,
                           _json(fields), applied_at))


def _with_last_fault(row: InstanceRow, event_type: str, p, occurred_at: datetime.datetime,
                     first_occurred_at: datetime.datetime, count: int,
                     fields: dict) -> InstanceRow:
    """``row`` with the fault ``p`` as its last fault, if it replaces the stored one."""
    if not apply_rules.replaces_last_fault(last_fault_key(row.last_fault), row, p.host,
                                           p.epoch, p.seq):
        return row
    return row._replace(last_fault=last_fault_json(
        event_type, occurred_at, fields, count, first_occurred_at, p.host, p.epoch, p.seq))


def last_fault_json(event_type: str, occurred_at: datetime.datetime, fields: dict,
                    count: int, first_occurred_at: datetime.datetime, host: str, epoch: int,
                    seq: int) -> str:
    """``instances.last_fault``: a JSON object of the fault's event type, when it last
    occurred (ISO 8601, UTC, microseconds, as the wire has it), its own fields, how
    many times, when first, and its notification's key (host, epoch, seq)."""
    return _json({"event_type": event_type, "occurred_at": timeutil.isoformat(occurred_at),
                  **fields, "count": count,
                  "first_occurred_at": timeutil.isoformat(first_occurred_at),
                  "host": host, "epoch": epoch, "seq": seq})


def last_fault_key(stored: Optional[str]) -> Optional[tuple[str, int, int]]:
    """The ``(host, epoch, seq)`` of a stored last fault; None where there is none, or
    where the text does not say (it is then replaced)."""
    if stored is None:
        return None
    try:
        value = json.loads(stored)
        key = (value["host"], value["epoch"], value["seq"])
    except (ValueError, TypeError, KeyError):
        return None
    if (not isinstance(key[0], str) or type(key[1]) is not int or type(key[2]) is not int):
        return None
    return key


def _json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


def naive_utc(moment: datetime.datetime) -> datetime.datetime:
    """Datetimes are stored naive, in UTC, on every backend."""
    return moment.astimezone(timeutil.UTC).replace(tzinfo=None)


_NAIVE_2000 = datetime.datetime(2000, 1, 1)
_AWARE_2000 = datetime.datetime(2000, 1, 1, tzinfo=timeutil.UTC)


def as_naive_utc(moment: datetime.datetime) -> datetime.datetime:
    """``naive_utc(moment)`` of an aware ``moment`` (``moment.replace(tzinfo=None)``
    where it is in UTC), by timedelta arithmetic: 0.11 us where Python 3.11's
    ``replace(tzinfo=None)`` takes 1.5, once per event in ``fold`` (tests/unit/
    test_fold.py holds it to ``naive_utc``). The result's ``fold`` is 0 (it decides
    nothing for a naive UTC time)."""
    return _NAIVE_2000 + (moment - _AWARE_2000)


def as_aware_utc(moment: datetime.datetime) -> datetime.datetime:
    """``moment.replace(tzinfo=UTC)`` of a naive ``moment`` in UTC (as stored), by
    timedelta arithmetic: 0.12 us against 1.5 under Python 3.11, once per row the store
    loads (tests/unit/test_fold.py holds it to ``replace``)."""
    return _AWARE_2000 + (moment - _NAIVE_2000)


def parse_utc(text: str) -> datetime.datetime:
    """``timeutil.parse(text)``, without its ``astimezone`` where the text's offset is
    UTC already (``+00:00`` or ``Z``, as the agents write it): 0.2 us against 0.45
    (tests/unit/test_fold.py holds it to ``timeutil.parse``)."""
    moment = _fromisoformat(text)
    return moment if moment.tzinfo is timeutil.UTC else timeutil.parse(text)


_fromisoformat = datetime.datetime.fromisoformat


def _is_new_state(note: Notification) -> bool:
    p = note.payload
    return isinstance(p, HostInventoryPayload) and p.new_state


def _started_over_deleted(rows: dict[str, InstanceRow],
                          start_over: list[tuple[str, int]]) -> dict[str, InstanceRow]:
    """``rows`` as they are once ``Writes.start_over`` has renumbered the deleted rows
    of each host starting over (the store writes that for the rows it did not load)."""
    if not start_over:
        return rows
    rows = dict(rows)
    for host, epoch in start_over:
        for uuid, row in rows.items():
            if row.deleted and row.host == host and row.epoch > epoch:
                rows[uuid] = row._replace(epoch=epoch, seq=0)
    return rows


def _start_over(current: dict[str, Optional[InstanceRow]], host: str, epoch: int) -> None:
    """A host starts over with a new state (its state directory was new or lost): its
    epoch is its newest, whatever its value. Its rows marked with a greater epoch (the
    counters of an earlier state, started with a clock that was ahead) yield to it."""
    moved = 0
    for uuid, row in current.items():
        if row is not None and row.host == host and row.epoch > epoch:
            current[uuid] = row._replace(epoch=epoch, seq=0)
            moved += 1
    if moved:
        LOG.warning("host %s starts over with a new state at epoch %d, below the epoch of "
                    "%d of its instances (an earlier state of it started with a clock "
                    "ahead): they now yield to its new epoch", host, epoch, moved)


def _hosts(payloads: list, heartbeats: list[HostHeartbeatPayload], existing: dict[str, HostRow],
           now: datetime.datetime, restarted: set[str]
           ) -> tuple[list[HostRow], list[HostRow], dict[str, float]]:
    """Each host's position (the newest ``(epoch, seq)`` it was heard at) and, from its
    heartbeats, its liveness: a heartbeat's arrival here, on this consumer's clock, is
    what keeps a host up (never the moment the host's clock wrote in it). A heartbeat
    of an older epoch than the host's (a redelivery from before a restart) changes
    nothing; within an epoch the last to arrive wins. ``restarted``: hosts that started
    over with a new state in this batch: their position is set, even lower. Returns the
    new rows, the rows overwritten, and each beating host's clock offset."""
    stamp = naive_utc(now)
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
    inserts, updates = [], []
    offsets = {}
    for name in sorted(newest):
        row = existing.get(name)
        epoch, seq = newest[name]
        if row is None:
            values = HostRow(name=name, status="up", agent_status="running",
                             libvirt_connected=True, last_heartbeat_at=None, epoch=epoch,
                             last_seq=seq, updated_at=stamp, clock_offset=None)
        else:
            values = row._replace(updated_at=stamp)
            if name in restarted or (epoch, seq) > (row.epoch, row.last_seq):
                values = values._replace(epoch=epoch, last_seq=seq)
        hb = beats.get(name)
        if hb is not None and hb.epoch >= values.epoch:
            offset = (timeutil.parse(hb.occurred_at) - now).total_seconds()
            offsets[name] = offset
            values = values._replace(
                last_heartbeat_at=stamp, agent_status=hb.status,
                libvirt_connected=hb.libvirt_connected, clock_offset=offset,
                status="down" if hb.status == "stopping" else "up")
        (inserts if row is None else updates).append(values)
    return inserts, updates, offsets
