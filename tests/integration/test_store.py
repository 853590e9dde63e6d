"""Store.apply_batch and the lifecycle-manage reads against SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime
import re
import threading
import uuid

import pytest
import sqlalchemy as sa

from consumer.db import queries
from consumer.db.tables import hosts, instances, journal
from consumer.store import Store
from lifecycle_common import timeutil, wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    DefinedDetail, DomainState, Event, ResumedDetail, StartedDetail, StoppedDetail,
    SuspendedDetail, UndefinedDetail)

pytestmark = pytest.mark.integration

HOST = "compute-1"
OTHER = "compute-2"
EPOCH = 1_700_000_000
T0 = 1_764_000_000.123456  # an epoch time with microseconds

ISO_UTC_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

CODES = {
    "defined": (Event.DEFINED, DefinedDetail.ADDED),
    "started": (Event.STARTED, StartedDetail.BOOTED),
    "paused": (Event.SUSPENDED, SuspendedDetail.PAUSED),
    "resumed": (Event.RESUMED, ResumedDetail.UNPAUSED),
    "stopped": (Event.STOPPED, StoppedDetail.DESTROYED),
    "crashed": (Event.STOPPED, StoppedDetail.CRASHED),
    "undefined": (Event.UNDEFINED, UndefinedDetail.REMOVED),
}


def event(what: str, seq: int, uuid_: str, name: str = "vm", host: str = HOST,
          epoch: int = EPOCH, at: float | None = None) -> wire.Notification:
    code, detail = CODES[what]
    return notifications.instance_notification(host, epoch, DomainEvent(
        seq=seq, occurred_at=T0 + seq if at is None else at, uuid=uuid_, name=name,
        event=int(code), detail=int(detail)))


def inventory(seq: int, domains: list[tuple[str, str, DomainState]], host: str = HOST,
              epoch: int = EPOCH) -> wire.Notification:
    return notifications.inventory_notification(host, epoch, Inventory(
        seq=seq, occurred_at=T0 + seq, reason="start",
        domains=tuple(DomainSnapshot(u, n, int(s), 1) for u, n, s in domains)))


def heartbeat(last_seq: int, status: str = "running", host: str = HOST, epoch: int = EPOCH,
              at: datetime.datetime | None = None) -> wire.Notification:
    return notifications.heartbeat_notification(
        host, epoch, last_seq, 1.0, status, True,
        now=at or timeutil.utcnow())


def wire_roundtrip(notes):
    """What the consumer really gets: the notifications encoded and decoded."""
    return [wire.decode(wire.encode(n)) for n in notes]


def new_uuid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def store(db_engine):
    return Store(db_engine)


def instance_row(engine, uuid_):
    with engine.connect() as conn:
        return conn.execute(sa.select(instances).where(instances.c.uuid == uuid_)).one_or_none()


def host_row(engine, name=HOST):
    with engine.connect() as conn:
        return conn.execute(sa.select(hosts).where(hosts.c.name == name)).one_or_none()


def journal_keys(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(journal.c.host, journal.c.epoch, journal.c.seq)
            .order_by(journal.c.host, journal.c.epoch, journal.c.seq))]


def test_new_instance_is_inserted(store, db_engine):
    vm = new_uuid()
    result = store.apply_batch(wire_roundtrip([event("started", 5, vm, name="web-1")]))
    assert result.outcomes["applied"] == 1
    row = instance_row(db_engine, vm)
    assert (row.name, row.host, row.power_state, row.deleted) == ("web-1", HOST, "running", False)
    assert (row.epoch, row.seq, row.last_event_type) == (EPOCH, 5, "instance.started")
    assert row.event_occurred_at == datetime.datetime.fromtimestamp(T0 + 5, timeutil.UTC).replace(tzinfo=None)
    assert journal_keys(db_engine) == [(HOST, EPOCH, 5)]


def test_names_and_hosts_are_stored_as_given_in_a_many_row_batch(store, db_engine):
    """Rows are written many at a time (arrays on PostgreSQL): characters that mean
    something in SQL or in an array literal come back unchanged, inserted and updated."""
    odd = ['quote "q"', "back\\slash", "{brace},comma", "NULL", "", "it's", "tab\there", "é ü",
           "日本語 🚀"]
    host = "Host-9.x_y"  # a host name holds no more than this (the schema's pattern)
    vms = [new_uuid() for _ in odd]
    store.apply_batch(wire_roundtrip(
        [event("started", i + 1, vm, name=name, host=host)
         for i, (vm, name) in enumerate(zip(vms, odd))]))
    store.apply_batch(wire_roundtrip(
        [event("paused", i + 100, vm, name=name[::-1], host=host)
         for i, (vm, name) in enumerate(zip(vms, odd))]))
    for vm, name in zip(vms, odd):
        row = instance_row(db_engine, vm)
        assert (row.name, row.host, row.power_state) == (name[::-1], host, "paused")
    assert host_row(db_engine, host).last_seq == 100 + len(odd) - 1


def test_newer_event_updates_older_or_duplicate_changes_nothing(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([event("started", 5, vm)]))
    store.apply_batch(wire_roundtrip([event("paused", 7, vm)]))
    row = instance_row(db_engine, vm)
    assert (row.power_state, row.seq) == ("paused", 7)

    older = store.apply_batch(wire_roundtrip([event("resumed", 6, vm)]))
    assert older.outcomes["stale"] == 1 and older.outcomes["applied"] == 0
    duplicate = store.apply_batch(wire_roundtrip([event("paused", 7, vm)]))
    assert duplicate.duplicates == 1 and sum(duplicate.outcomes.values()) == 0

    row = instance_row(db_engine, vm)
    assert (row.power_state, row.seq, row.last_event_type) == ("paused", 7, "instance.paused")
    assert journal_keys(db_engine) == [(HOST, EPOCH, 5), (HOST, EPOCH, 6), (HOST, EPOCH, 7)]
    with db_engine.connect() as conn:
        outcomes = {r.seq: r.outcome for r in conn.execute(sa.select(journal.c.seq, journal.c.outcome))}
    assert outcomes == {5: "applied", 6: "stale", 7: "applied"}


def test_newer_epoch_wins_over_a_greater_seq_of_an_older_epoch(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([event("paused", 50, vm, epoch=EPOCH)]))
    store.apply_batch(wire_roundtrip([event("resumed", 3, vm, epoch=EPOCH + 1)]))
    assert instance_row(db_engine, vm).power_state == "running"
    stale = store.apply_batch(wire_roundtrip([event("stopped", 60, vm, epoch=EPOCH)]))
    assert stale.outcomes["stale"] == 1
    assert instance_row(db_engine, vm).power_state == "running"


def test_redelivered_batch_is_applied_once(store, db_engine):
    vms = [new_uuid() for _ in range(3)]
    batch = wire_roundtrip([event("started", 10 + i, vm) for i, vm in enumerate(vms)]
                           + [event("paused", 20, vms[0])])
    first = store.apply_batch(batch)
    assert first.outcomes["applied"] == 4
    again = store.apply_batch(batch)
    assert again.duplicates == 4 and sum(again.outcomes.values()) == 0
    # A batch holding the same message twice applies it once, too.
    vm = new_uuid()
    twice = store.apply_batch(wire_roundtrip([event("started", 30, vm)] * 2))
    assert twice.outcomes["applied"] == 1 and twice.duplicates == 1
    assert journal_keys(db_engine) == [(HOST, EPOCH, s) for s in (10, 11, 12, 20, 30)]
    assert instance_row(db_engine, vms[0]).power_state == "paused"


def test_inventory_is_the_truth_for_its_host(store, db_engine):
    kept, corrected, vanished, missing, elsewhere = (new_uuid() for _ in range(5))
    store.apply_batch(wire_roundtrip([
        event("started", 1, kept, name="kept"),
        event("started", 2, corrected, name="corrected"),
        event("started", 3, vanished, name="vanished"),
        event("started", 1, elsewhere, name="elsewhere", host=OTHER),
    ]))
    store.apply_batch(wire_roundtrip([inventory(10, [
        (kept, "kept", DomainState.RUNNING),
        (corrected, "corrected", DomainState.SHUTOFF),
        (missing, "missing", DomainState.PAUSED),
    ])]))
    assert instance_row(db_engine, kept).power_state == "running"
    assert instance_row(db_engine, corrected).power_state == "shutdown"
    new = instance_row(db_engine, missing)
    assert (new.name, new.host, new.power_state, new.deleted) == ("missing", HOST, "paused", False)
    gone = instance_row(db_engine, vanished)
    assert gone.deleted is True and gone.last_event_type == "host.inventory"
    other = instance_row(db_engine, elsewhere)
    assert (other.deleted, other.power_state) == (False, "running")


def test_inventory_older_than_an_applied_event_does_not_overwrite_it(store, db_engine):
    vm, created_later = new_uuid(), new_uuid()
    # Events 12 and 13 were applied first; the inventory (seq 10) was delayed.
    store.apply_batch(wire_roundtrip([event("paused", 12, vm), event("started", 13, created_later)]))
    result = store.apply_batch(wire_roundtrip([inventory(10, [(vm, "vm", DomainState.RUNNING)])]))
    assert result.outcomes["applied"] == 1
    row = instance_row(db_engine, vm)
    assert (row.power_state, row.seq) == ("paused", 12)
    # Not listed by the older inventory, but created after it: not deleted.
    assert instance_row(db_engine, created_later).deleted is False


def test_inventory_and_events_in_one_batch_apply_in_sequence_order(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([
        event("paused", 12, vm), inventory(10, [(vm, "vm", DomainState.RUNNING)]),
        event("started", 11, vm)]))
    row = instance_row(db_engine, vm)
    assert (row.power_state, row.seq) == ("paused", 12)


def test_undefined_event_marks_deleted(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([event("started", 1, vm), event("stopped", 2, vm),
                                      event("undefined", 3, vm)]))
    row = instance_row(db_engine, vm)
    assert (row.deleted, row.power_state) == (True, "shutdown")


def _seconds_ago(moment: datetime.datetime) -> float:
    return (timeutil.utcnow().replace(tzinfo=None) - moment).total_seconds()


def test_heartbeats_set_the_host_up(store, db_engine):
    """A heartbeat keeps its host up from when it arrives here (the consumer's clock),
    whatever moment the host's clock wrote in it; the difference is the host's clock
    offset, kept for the operator."""
    beat_at = datetime.datetime(2026, 11, 25, 8, 54, 44, 654321, tzinfo=timeutil.UTC)
    before = timeutil.utcnow()
    result = store.apply_batch(wire_roundtrip([heartbeat(41, at=beat_at)]))
    assert result.heartbeats == 1
    row = host_row(db_engine)
    assert (row.status, row.agent_status, row.epoch, row.last_seq) == ("up", "running", EPOCH, 41)
    assert 0 <= _seconds_ago(row.last_heartbeat_at) < 30  # arrival, not beat_at
    assert row.clock_offset == pytest.approx((beat_at - before).total_seconds(), abs=30)
    assert result.clock_offsets[HOST] == pytest.approx(row.clock_offset)
    assert journal_keys(db_engine) == []  # heartbeats are not journaled

    earlier = beat_at - datetime.timedelta(hours=1)  # the host's clock stepped back
    store.apply_batch(wire_roundtrip([heartbeat(45, at=earlier, epoch=EPOCH + 1)]))
    row = host_row(db_engine)
    assert (row.epoch, row.last_seq) == (EPOCH + 1, 45)
    assert 0 <= _seconds_ago(row.last_heartbeat_at) < 30


@pytest.mark.parametrize("offset", [-40.0, +200.0, +7200.0])
def test_a_host_whose_clock_is_off_stays_up_while_it_beats(store, db_engine, offset):
    beat_at = timeutil.utcnow() + datetime.timedelta(seconds=offset)
    store.apply_batch(wire_roundtrip([heartbeat(1, at=beat_at)]))
    assert store.mark_silent_hosts_down(30) == []
    row = host_row(db_engine)
    assert row.status == "up"
    assert row.clock_offset == pytest.approx(offset, abs=5)


def test_a_heartbeat_of_an_earlier_epoch_changes_nothing(store, db_engine):
    """A redelivered 'stopping' of the run before a restart does not mark it down."""
    store.apply_batch(wire_roundtrip([heartbeat(5, epoch=EPOCH + 1)]))
    store.apply_batch(wire_roundtrip([heartbeat(4, "stopping", epoch=EPOCH)]))
    row = host_row(db_engine)
    assert (row.status, row.agent_status, row.epoch, row.last_seq) == ("up", "running", EPOCH + 1, 5)


def test_events_advance_the_hosts_last_seq(store, db_engine):
    store.apply_batch(wire_roundtrip([event("started", 7, new_uuid()), event("started", 9, new_uuid())]))
    row = host_row(db_engine)
    assert (row.epoch, row.last_seq) == (EPOCH, 9)


def test_stopping_heartbeat_sets_the_host_down(store, db_engine):
    now = timeutil.utcnow()
    store.apply_batch(wire_roundtrip([heartbeat(3, at=now)]))
    assert host_row(db_engine).status == "up"
    store.apply_batch(wire_roundtrip([heartbeat(3, "stopping", at=now + datetime.timedelta(seconds=1))]))
    row = host_row(db_engine)
    assert (row.status, row.agent_status) == ("down", "stopping")


def test_a_degraded_heartbeat_keeps_the_host_up_and_says_so(store, db_engine):
    """The agent's last word before it exits to be restarted: not a clean stop, so the
    host stays up (until host_down_after if it does not come back)."""
    now = timeutil.utcnow()
    store.apply_batch(wire_roundtrip([heartbeat(3, "degraded", at=now)]))
    row = host_row(db_engine)
    assert (row.status, row.agent_status) == ("up", "degraded")


def test_mark_silent_hosts_down(store, db_engine):
    now = timeutil.utcnow()
    store.apply_batch(wire_roundtrip([
        heartbeat(1, host=HOST, at=now - datetime.timedelta(seconds=120)),  # a lagging clock
        heartbeat(1, host=OTHER, at=now),
    ]))
    assert store.mark_silent_hosts_down(60) == []  # both beat just now, by our clock
    with db_engine.begin() as conn:  # HOST's last heartbeat arrived two minutes ago
        conn.execute(hosts.update().where(hosts.c.name == HOST).values(
            last_heartbeat_at=(now - datetime.timedelta(seconds=120)).replace(tzinfo=None)))
    assert store.mark_silent_hosts_down(60) == [HOST]
    assert host_row(db_engine, HOST).status == "down"
    assert host_row(db_engine, OTHER).status == "up"
    assert store.mark_silent_hosts_down(60) == []  # already down
    # A fresh heartbeat brings it back up.
    store.apply_batch(wire_roundtrip([heartbeat(2, host=HOST, at=timeutil.utcnow())]))
    assert host_row(db_engine, HOST).status == "up"


def test_competing_consumers_apply_each_event_once(db_url, db_engine):
    """Two threads (two consumers) apply overlapping batches at once: the final state is
    that of the newest event of each instance and the journal holds each event once."""
    vms = [new_uuid() for _ in range(20)]
    steps = ["started", "paused", "resumed", "paused", "resumed", "stopped"]
    notes = []
    seq = 0
    for step in steps:
        for vm in vms:
            seq += 1
            notes.append(event(step, seq, vm, name=vm[:8]))
    notes = wire_roundtrip(notes)
    # Consumer A sees everything in order; consumer B sees the same messages again in
    # overlapping, reversed batches (redeliveries after a lost ack).
    size = 15
    batches_a = [notes[i:i + size] for i in range(0, len(notes), size)]
    batches_b = [notes[max(0, i - 5):i + size] for i in range(0, len(notes), size)][::-1]
    errors = []
    start = threading.Barrier(2)

    def consume(batches):
        from consumer.db import engine as db_engine_module
        engine = db_engine_module.create(db_url)
        store = Store(engine)
        try:
            start.wait()
            for batch in batches:
                store.apply_batch(batch)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=consume, args=(b,)) for b in (batches_a, batches_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert journal_keys(db_engine) == [(HOST, EPOCH, s) for s in range(1, seq + 1)]
    with db_engine.connect() as conn:
        rows = {r.uuid: r for r in conn.execute(sa.select(instances))}
    assert set(rows) == set(vms)
    for vm in vms:
        row = rows[vm]
        assert (row.power_state, row.last_event_type) == ("shutdown", "instance.stopped")
        assert row.seq == seq - len(vms) + vms.index(vm) + 1
    assert host_row(db_engine).last_seq == seq


def test_manage_queries_follow_the_json_contract(store, db_engine):
    vm, gone = new_uuid(), new_uuid()
    beat_at = datetime.datetime(2026, 11, 25, 8, 54, 44, 5, tzinfo=timeutil.UTC)
    store.apply_batch(wire_roundtrip([
        event("started", 1, vm, name="web", at=1_764_000_000.000001),
        event("started", 2, gone, name="old"), event("undefined", 3, gone, name="old"),
        heartbeat(3, at=beat_at)]))

    listed = {i["uuid"]: i for i in queries.list_instances(db_engine)}
    assert set(listed) == {vm, gone}
    web = listed[vm]
    for key in ("uuid", "name", "host", "power_state", "deleted", "event_occurred_at", "applied_at"):
        assert key in web
    assert (web["name"], web["host"], web["power_state"], web["deleted"]) == ("web", HOST, "running", False)
    assert listed[gone]["deleted"] is True
    assert web["event_occurred_at"] == "2025-11-24T16:00:00.000001+00:00"
    assert ISO_UTC_MICROS.match(web["applied_at"]), web["applied_at"]
    applied_at = timeutil.parse(web["applied_at"])
    assert abs((timeutil.utcnow() - applied_at).total_seconds()) < 60
    assert [i["uuid"] for i in queries.list_instances(db_engine, include_deleted=False)] == [vm]
    assert queries.list_instances(db_engine, host=OTHER) == []

    (host,) = queries.list_hosts(db_engine)
    assert (host["name"], host["status"], host["epoch"], host["last_seq"]) == (HOST, "up", EPOCH, 3)
    assert ISO_UTC_MICROS.match(host["last_heartbeat_at"]), host["last_heartbeat_at"]
    assert abs((timeutil.utcnow() - timeutil.parse(host["last_heartbeat_at"])).total_seconds()) < 60
    assert host["clock_offset"] == pytest.approx(
        (beat_at - timeutil.parse(host["last_heartbeat_at"])).total_seconds(), abs=0.01)
    assert isinstance(host["epoch"], int) and isinstance(host["last_seq"], int)


def test_journal_is_pruned_after_its_retention_and_order_still_holds(store, db_engine):
    u = new_uuid()
    store.apply_batch(wire_roundtrip([event("started", 1, u), event("paused", 2, u)]))
    with db_engine.begin() as conn:  # age the first row past the retention
        conn.execute(journal.update().where(journal.c.seq == 1).values(
            applied_at=datetime.datetime(2000, 1, 1)))
    assert store.prune_journal(older_than=3600) == 1
    assert journal_keys(db_engine) == [(HOST, EPOCH, 2)]
    # A very late redelivery of the pruned event is no longer a duplicate, but it is
    # still older than what the row holds: it changes nothing.
    result = store.apply_batch(wire_roundtrip([event("started", 1, u)]))
    assert result.outcomes["stale"] == 1
    assert instance_row(db_engine, u).power_state == "paused"


# -- time: no clock decides; a host that starts over; moves between hosts --------------

def new_state_inventory(seq: int, domains, host: str = HOST, epoch: int = EPOCH):
    return notifications.inventory_notification(host, epoch, Inventory(
        seq=seq, occurred_at=T0 + seq, reason="start", new_state=True,
        domains=tuple(DomainSnapshot(u, n, int(s), 1) for u, n, s in domains)))


def test_a_host_that_starts_over_below_its_old_epoch_is_applied(store, db_engine):
    """An earlier state of the host started with a clock two hours ahead, so its epochs
    ran ahead; that state is lost and the host starts over with the right clock, at a
    lower epoch: its new-state inventory makes its new epoch the newest, and its events
    apply from then on. Without it they would all be stale for two hours."""
    vm, gone = new_uuid(), new_uuid()
    ahead = EPOCH + 7200
    store.apply_batch(wire_roundtrip([
        event("started", 10, vm, epoch=ahead), event("started", 11, gone, epoch=ahead),
        event("undefined", 12, gone, epoch=ahead)]))
    store.apply_batch(wire_roundtrip([
        new_state_inventory(1, [(vm, "vm", DomainState.RUNNING)], epoch=EPOCH),
        event("paused", 2, vm, epoch=EPOCH)]))
    row = instance_row(db_engine, vm)
    assert (row.power_state, row.epoch, row.seq) == ("paused", EPOCH, 2)
    assert (host_row(db_engine).epoch, host_row(db_engine).last_seq) == (EPOCH, 2)
    assert instance_row(db_engine, gone).epoch == EPOCH  # the deleted row yields too
    store.apply_batch(wire_roundtrip([event("stopped", 3, vm, epoch=EPOCH)]))
    assert instance_row(db_engine, vm).power_state == "shutdown"


def test_what_a_host_said_before_it_started_over_comes_first_in_a_batch(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([
        event("started", 10, vm, epoch=EPOCH + 7200),  # the old state's, arriving late
        new_state_inventory(1, [(vm, "vm", DomainState.PAUSED)], epoch=EPOCH),
        event("resumed", 2, vm, epoch=EPOCH)]))
    row = instance_row(db_engine, vm)
    assert (row.power_state, row.epoch, row.seq) == ("running", EPOCH, 2)


def test_between_hosts_the_newest_arrival_wins_whatever_the_clocks(store, db_engine):
    """compute-2's clock is two hours behind: its start of the migrated guest still takes
    it over, and compute-1's late migration events are stale."""
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([event("started", 5, vm, host=HOST)]))
    store.apply_batch(wire_roundtrip([
        event("resumed", 3, vm, host=OTHER, at=T0 - 7200)]))
    row = instance_row(db_engine, vm)
    assert (row.host, row.power_state) == (OTHER, "running")
    store.apply_batch(wire_roundtrip([event("stopped", 6, vm, host=HOST, at=T0 + 7200)]))
    assert (instance_row(db_engine, vm).host, instance_row(db_engine, vm).power_state) == (
        OTHER, "running")


def test_within_a_batch_hosts_are_taken_in_arrival_order(store, db_engine):
    vm = new_uuid()
    # OTHER sorts after HOST by name; arrival says HOST's start came last.
    store.apply_batch(wire_roundtrip([
        event("started", 1, vm, host=OTHER), event("started", 1, vm, host=HOST)]))
    assert instance_row(db_engine, vm).host == HOST


def test_a_late_copy_of_an_old_start_cannot_take_back_a_moved_instance(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([event("started", 5, vm, host=HOST)]))
    store.apply_batch(wire_roundtrip([event("resumed", 3, vm, host=OTHER)]))
    store.apply_batch(wire_roundtrip([event("stopped", 6, vm, host=HOST)]))  # journaled, stale
    # A copy of compute-1's seq 4 start, never applied before (not a duplicate): older
    # than what compute-1 said since, so it is stale.
    store.apply_batch(wire_roundtrip([event("started", 4, vm, host=HOST)]))
    row = instance_row(db_engine, vm)
    assert (row.host, row.power_state) == (OTHER, "running")
    # A newer start on compute-1 (the guest really came back) takes it.
    store.apply_batch(wire_roundtrip([event("started", 7, vm, host=HOST)]))
    assert instance_row(db_engine, vm).host == HOST


def test_renaming_a_host_moves_its_instances_and_row(store, db_engine):
    from consumer.db import host_rename
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([event("started", 1, vm, host=HOST), heartbeat(1)]))
    renamed = host_rename.rename(db_engine, HOST, "compute-1.example.org")
    assert (renamed.instances, renamed.merged) == (1, False)
    assert instance_row(db_engine, vm).host == "compute-1.example.org"
    assert host_row(db_engine, HOST) is None
    assert host_row(db_engine, "compute-1.example.org").epoch == EPOCH
    # The renamed host's new state (a lower epoch even) takes over its instances.
    store.apply_batch(wire_roundtrip([
        new_state_inventory(1, [(vm, "vm", DomainState.PAUSED)], host="compute-1.example.org",
                            epoch=EPOCH - 5)]))
    assert instance_row(db_engine, vm).power_state == "paused"
    with pytest.raises(host_rename.UnknownHost):
        host_rename.rename(db_engine, HOST, "x")
