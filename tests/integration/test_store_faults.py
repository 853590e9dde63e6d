"""Faults through Store.apply_batch against SQLite, PostgreSQL (pipelined) and MariaDB:
the faults table, reboots, the last fault and the state's reason, redeliveries and
pruning."""

from __future__ import annotations

import datetime
import json

import pytest
import sqlalchemy as sa

from consumer.db.tables import faults, journal
from consumer.store import Store
from lifecycle_common import timeutil, wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    CrashedDetail, DomainState, Event, StartedDetail, SuspendedDetail)
from lifecycle_publisher.translation import Observed
from tests.support.faults import fault_notification
from tests.integration.test_store import (
    EPOCH, HOST, OTHER, T0, instance_row, journal_keys, new_uuid, wire_roundtrip)

pytestmark = pytest.mark.integration

FIELDS = {
    "instance.rebooted": {},
    "instance.watchdog": {"action": "pause"},
    # a path with quotes, a backslash and characters beyond ASCII and the BMP
    "instance.io_error": {"device": "virtio-disk0", "path": '/srv/"d\\isk" \u00e9\u65e5 \U0001F680',
                          "action": "pause", "reason": "eio"},
    "instance.control_error": {},
    "instance.memory_failure": {"recipient": "hypervisor", "action": "ignore",
                                "action_required": False, "recursive": True},
    "instance.guest_agent": {"state": "disconnected", "reason": "domain_start"},
}


def fault_note(event_type: str, seq: int, uuid_: str, host: str = HOST, epoch: int = EPOCH,
               count: int = 1, first: int | None = None, **fields) -> wire.Notification:
    return fault_notification(event_type, seq, uuid_, host, epoch, T0,
                              {**FIELDS[event_type], **fields}, count, first)


def lifecycle(event, detail, seq: int, uuid_: str, state=None, reason: int = 0,
              host: str = HOST, epoch: int = EPOCH) -> wire.Notification:
    return notifications.instance_notification(host, epoch, DomainEvent(
        seq=seq, occurred_at=T0 + seq, uuid=uuid_, name="vm", event=int(event),
        detail=int(detail)), None if state is None else Observed(int(state), reason))


def fault_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(faults).order_by(faults.c.host, faults.c.epoch,
                                                       faults.c.seq)).all()


def moment(seq: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(T0 + seq, timeutil.UTC).replace(tzinfo=None)


@pytest.fixture
def store(db_engine):
    return Store(db_engine)


def test_a_batch_of_faults_and_events_redelivered_twice_applies_once(store, db_engine):
    vm, other = new_uuid(), new_uuid()
    batch = wire_roundtrip([
        lifecycle(Event.STARTED, StartedDetail.BOOTED, 1, vm, DomainState.RUNNING, 1),
        fault_note("instance.rebooted", 2, vm, count=3),
        fault_note("instance.io_error", 4, other, count=37, first=3),
        lifecycle(Event.SUSPENDED, SuspendedDetail.IOERROR, 5, other, DomainState.PAUSED, 5),
        fault_note("instance.guest_agent", 6, vm),
        fault_note("instance.memory_failure", 7, vm),
        fault_note("instance.watchdog", 8, vm),
        lifecycle(Event.CRASHED, CrashedDetail.PANICKED, 9, vm, DomainState.CRASHED, 1),
        fault_note("instance.control_error", 10, other),
        fault_note("instance.rebooted", 11, vm, count=2),
    ])
    first = store.apply_batch(batch)
    assert first.outcomes["applied"] == 10
    assert first.faults == {"instance.rebooted": 5, "instance.io_error": 37,
                            "instance.guest_agent": 1, "instance.memory_failure": 1,
                            "instance.watchdog": 1, "instance.crashed": 1,
                            "instance.control_error": 1}

    def check():
        row = instance_row(db_engine, vm)
        assert (row.power_state, row.state_reason, row.reboots, row.seq) == (
            "crashed", "panicked", 5, 9)  # faults do not move the row's position
        assert json.loads(row.last_fault) == {
            "event_type": "instance.crashed", "occurred_at": timeutil.isoformat_epoch(T0 + 9),
            "reason": "panicked", "count": 1,
            "first_occurred_at": timeutil.isoformat_epoch(T0 + 9),
            "host": HOST, "epoch": EPOCH, "seq": 9}
        paused = instance_row(db_engine, other)
        assert (paused.power_state, paused.state_reason, paused.reboots) == (
            "paused", "ioerror", 0)
        assert json.loads(paused.last_fault)["event_type"] == "instance.control_error"
        rows = fault_rows(db_engine)
        assert [(r.seq, r.event_type, r.instance_uuid, r.count) for r in rows] == [
            (2, "instance.rebooted", vm, 3), (4, "instance.io_error", other, 37),
            (6, "instance.guest_agent", vm, 1), (7, "instance.memory_failure", vm, 1),
            (8, "instance.watchdog", vm, 1), (9, "instance.crashed", vm, 1),
            (10, "instance.control_error", other, 1), (11, "instance.rebooted", vm, 2)]
        io_error = rows[1]
        assert json.loads(io_error.fields) == FIELDS["instance.io_error"]
        assert (io_error.occurred_at, io_error.first_occurred_at) == (moment(4), moment(3))
        assert json.loads(rows[5].fields) == {"reason": "panicked"}
        assert json.loads(rows[3].fields) == FIELDS["instance.memory_failure"]
        assert len({r.applied_at for r in rows}) == 1
    check()
    for _ in range(2):
        again = store.apply_batch(batch)
        assert (again.duplicates, dict(again.outcomes), again.faults) == (10, {}, {})
        check()
    assert len(journal_keys(db_engine)) == 10


def test_reboots_and_the_last_fault_across_batches_out_of_order(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([
        lifecycle(Event.STARTED, StartedDetail.BOOTED, 1, vm),
        fault_note("instance.io_error", 9, vm, count=4, first=6)]))
    late = store.apply_batch(wire_roundtrip([fault_note("instance.watchdog", 5, vm),
                                             fault_note("instance.rebooted", 7, vm, count=2)]))
    assert dict(late.outcomes) == {"applied": 2}  # recorded; the row keeps its position
    row = instance_row(db_engine, vm)
    assert (row.seq, row.last_event_type, row.state_reason, row.reboots) == (
        1, "instance.started", "booted", 2)
    assert json.loads(row.last_fault)["seq"] == 9  # not back to the older watchdog
    assert [r.seq for r in fault_rows(db_engine)] == [5, 7, 9]  # history all the same
    elsewhere = store.apply_batch(wire_roundtrip([
        fault_note("instance.watchdog", 2, vm, host=OTHER)]))
    assert dict(elsewhere.outcomes) == {"applied": 1}
    # a host that does not own the instance: history, not its last fault
    assert json.loads(instance_row(db_engine, vm).last_fault)["host"] == HOST
    assert len(fault_rows(db_engine)) == 4


def test_faults_are_pruned_with_the_journal(store, db_engine):
    vm = new_uuid()
    store.apply_batch(wire_roundtrip([fault_note("instance.watchdog", 1, vm),
                                      fault_note("instance.rebooted", 2, vm)]))
    old = datetime.datetime(2000, 1, 1)
    with db_engine.begin() as conn:  # age the first journal row past the retention
        conn.execute(journal.update().where(journal.c.seq == 1).values(applied_at=old))
    assert store.prune_journal(older_than=3600) == 1  # and its fault's row goes with it
    assert [r.seq for r in fault_rows(db_engine)] == [2]
    assert journal_keys(db_engine) == [(HOST, EPOCH, 2)]


def test_a_fault_whose_journal_row_alone_was_pruned_is_applied_again_without_failing(
        store, db_engine):
    vm = new_uuid()
    note = wire_roundtrip([fault_note("instance.rebooted", 3, vm)])
    store.apply_batch(note)
    with db_engine.begin() as conn:
        conn.execute(journal.delete())
    again = store.apply_batch(note)  # no longer a duplicate: its faults row is left as it is
    assert dict(again.outcomes) == {"applied": 1}
    assert len(fault_rows(db_engine)) == 1


def test_an_inventory_forgets_a_reason_it_does_not_confirm(store, db_engine):
    vm, kept = new_uuid(), new_uuid()
    store.apply_batch(wire_roundtrip([
        lifecycle(Event.SUSPENDED, SuspendedDetail.IOERROR, 1, vm, DomainState.PAUSED, 5),
        lifecycle(Event.SUSPENDED, SuspendedDetail.IOERROR, 2, kept, DomainState.PAUSED, 5)]))
    store.apply_batch(wire_roundtrip([notifications.inventory_notification(
        HOST, EPOCH, Inventory(seq=3, occurred_at=T0 + 3, reason="periodic", domains=(
            DomainSnapshot(vm, "vm", int(DomainState.PAUSED), 1),
            DomainSnapshot(kept, "vm", int(DomainState.PAUSED), 5))))]))
    assert instance_row(db_engine, vm).state_reason is None
    assert instance_row(db_engine, kept).state_reason == "ioerror"
