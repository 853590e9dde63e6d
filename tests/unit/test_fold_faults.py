"""consumer.fold with faults: their rows, reboots, the last fault, and why an instance
is in its state. No database."""

from __future__ import annotations

import json

import pytest

from consumer import fold
from lifecycle_common import timeutil, wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    CrashedDetail, DefinedDetail, DomainState, Event, ResumedDetail, ShutdownDetail,
    StartedDetail, StoppedDetail, SuspendedDetail)
from lifecycle_publisher.translation import Observed
from tests.support.faults import fault_notification
from tests.unit.test_fold import A, B, EPOCH, T0, VM1, VM2, at, row, run

FAULT_FIELDS = {
    "instance.rebooted": {},
    "instance.watchdog": {"action": "pause"},
    "instance.io_error": {"device": "virtio-disk0", "path": "/var/lib/disk \u00e9\"x\"",
                          "action": "pause", "reason": "eio"},
    "instance.control_error": {},
    "instance.memory_failure": {"recipient": "guest", "action": "ignore",
                                "action_required": True, "recursive": False},
    "instance.guest_agent": {"state": "connected", "reason": "channel"},
}


def fault(event_type, seq, uuid=VM1, host=A, epoch=EPOCH, count=1, first=None, **fields):
    """A fault notification as the consumer receives it (encoded and decoded)."""
    return wire.decode(wire.encode(fault_notification(
        event_type, seq, uuid, host, epoch, T0, {**FAULT_FIELDS[event_type], **fields},
        count, first)))


def life(event, detail, seq, state=None, reason=0, uuid=VM1, host=A, epoch=EPOCH):
    """A lifecycle event, with the domain's state and reason read after it (``state``
    None: not read)."""
    observed = None if state is None else Observed(int(state), reason)
    note = notifications.instance_notification(host, epoch, DomainEvent(
        seq=seq, occurred_at=T0 + seq, uuid=uuid, name="vm", event=int(event),
        detail=int(detail)), observed)
    return wire.decode(wire.encode(note))


def inventory(seq, domains, host=A, epoch=EPOCH):
    """``domains``: (uuid, state, reason) each."""
    return notifications.inventory_notification(host, epoch, Inventory(
        seq=seq, occurred_at=T0 + seq, reason="periodic", new_state=False,
        domains=tuple(DomainSnapshot(u, "vm", int(s), r) for u, s, r in domains)))


def written(writes):
    return {r.uuid: r for r in writes.new_instances + writes.changed_instances}


def last_fault(r):
    return None if r.last_fault is None else json.loads(r.last_fault)


# -- a fault moves neither the row's state nor its position -----------------------------

@pytest.mark.parametrize("event_type", sorted(FAULT_FIELDS))
def test_a_fault_moves_neither_the_rows_state_nor_its_position(event_type):
    before = row(state="paused", seq=3)._replace(state_reason="ioerror")
    writes = run([fault(event_type, 4)], [before])
    after = written(writes).get(VM1, before)
    assert (after.power_state, after.state_reason, after.deleted) == ("paused", "ioerror", False)
    assert (after.epoch, after.seq, after.last_event_type) == (EPOCH, 3, "instance.started")
    assert after.event_occurred_at == at(3)
    assert [(j.seq, j.event_type, j.instance_uuid, j.outcome) for j in writes.journal] == [
        (4, event_type, VM1, "applied")]
    assert [a[0] for a in writes.result.applied] == [event_type]


def test_a_fault_written_ahead_of_a_held_stop_does_not_make_the_stop_stale():
    """With [agent] stopped_event_delay, a STOPPED (seq 2) is held while a fault of the
    same guest (seq 3) is written: the stop arrives in a later batch, and applies."""
    first = run([life(Event.STARTED, StartedDetail.BOOTED, 1),
                 fault("instance.guest_agent", 3, state="disconnected")])
    started = written(first)[VM1]
    second = written(run([life(Event.STOPPED, StoppedDetail.SHUTDOWN, 2)], [started]))[VM1]
    assert (second.power_state, second.seq, second.state_reason) == ("shutdown", 2, "shutdown")


def test_a_storms_summary_written_after_newer_events_is_recorded_and_counted():
    """A coalesced summary carries its last occurrence's seq, and is written when its
    window ends: after events of higher seqs. It is still the instance's last fault."""
    paused = written(run([life(Event.SUSPENDED, SuspendedDetail.IOERROR, 9)]))[VM1]
    writes = run([fault("instance.io_error", 8, count=400, first=2)], [paused])
    after = written(writes)[VM1]
    assert (after.power_state, after.seq, after.state_reason) == ("paused", 9, "ioerror")
    assert last_fault(after)["count"] == 400
    assert [j.outcome for j in writes.journal] == ["applied"]


def test_a_fault_about_an_instance_unknown_yet_makes_its_row():
    writes = run([fault("instance.watchdog", 4)])
    new = writes.new_instances[0]
    assert (new.uuid, new.power_state, new.state_reason, new.reboots) == (VM1, "pending", None, 0)
    assert last_fault(new)["event_type"] == "instance.watchdog"
    assert fold.instances_to_load(fresh_of([fault("instance.io_error", 4)])) == ({VM1}, set())


def fresh_of(notes):
    return fold.Batch(notes).fresh(set())


def test_a_fault_about_an_instance_another_host_owns_wants_that_hosts_last_word():
    fresh = fresh_of([fault("instance.io_error", 4, host=B), fault("instance.rebooted", 5)])
    assert fold.words_wanted(fresh, {VM1: row(VM1)}) == {(VM1, B)}


# -- the faults rows ----------------------------------------------------------------------

def test_each_fresh_fault_is_a_row_with_its_own_fields():
    notes = [fault(t, seq) for seq, t in enumerate(sorted(FAULT_FIELDS), start=10)]
    writes = run(notes, [row(seq=1)])
    assert [(f.host, f.epoch, f.seq, f.instance_uuid, f.event_type, json.loads(f.fields))
            for f in writes.faults] == [
        (A, EPOCH, seq, VM1, t, FAULT_FIELDS[t])
        for seq, t in enumerate(sorted(FAULT_FIELDS), start=10)]
    assert {f.applied_at for f in writes.faults} == {writes.applied_at}


def test_a_coalesced_fault_keeps_its_first_and_last_moments_and_its_count():
    writes = run([fault("instance.io_error", 9, count=37, first=5)], [row(seq=1)])
    (f,) = writes.faults
    assert (f.count, f.occurred_at, f.first_occurred_at) == (
        37, at(9).replace(tzinfo=None), at(5).replace(tzinfo=None))
    assert writes.result.faults == {"instance.io_error": 37}


def test_a_duplicate_fault_writes_nothing_and_counts_nothing():
    note = fault("instance.rebooted", 4, count=3)
    writes = run([note, note], [row(seq=1)], journaled=[(A, EPOCH, 4)])
    assert (writes.faults, writes.journal, writes.changed_instances) == ([], [], [])
    assert not writes.result.faults and writes.result.duplicates == 2
    once = run([note, note], [row(seq=1)])  # repeated within a batch: once
    assert len(once.faults) == 1 and written(once)[VM1].reboots == 3


def test_a_fault_from_a_host_that_no_longer_owns_the_instance_is_history():
    """From the migration's source, after the guest moved: the fault happened, and is
    kept (its row, its reboots), but it does not speak for the instance now."""
    owned_by_b = row(host=B, seq=50)._replace(reboots=1)
    writes = run([fault("instance.rebooted", 4, count=2), fault("instance.watchdog", 5)],
                 [owned_by_b])
    after = written(writes)[VM1]
    assert [j.outcome for j in writes.journal] == ["applied", "applied"]
    assert (after.host, after.seq, after.last_event_type) == (B, 50, "instance.started")
    assert after.reboots == 3
    assert after.last_fault is None
    assert [f.event_type for f in writes.faults] == ["instance.rebooted", "instance.watchdog"]
    assert writes.result.faults == {"instance.rebooted": 2, "instance.watchdog": 1}


# -- reboots --------------------------------------------------------------------------------

def test_reboots_add_up_their_counts():
    writes = run([fault("instance.rebooted", 4), fault("instance.rebooted", 6, count=40, first=5)],
                 [row(seq=1)._replace(reboots=2)])
    after = written(writes)[VM1]
    assert after.reboots == 43
    assert after.last_fault is None  # a reboot is no fault of the guest's state
    assert writes.result.faults == {"instance.rebooted": 41}


def test_reboots_stop_at_what_the_column_holds():
    from lifecycle_common.wire.limits import INT64_MAX
    writes = run([fault("instance.rebooted", 4, count=INT64_MAX)], [row(seq=1)._replace(reboots=9)])
    assert written(writes)[VM1].reboots == INT64_MAX


# -- the last fault -------------------------------------------------------------------------

def test_the_last_fault_says_what_when_and_where():
    writes = run([fault("instance.io_error", 9, count=37, first=5)], [row(seq=1)])
    assert last_fault(written(writes)[VM1]) == {
        "event_type": "instance.io_error", "occurred_at": timeutil.isoformat(at(9)),
        **FAULT_FIELDS["instance.io_error"], "count": 37,
        "first_occurred_at": timeutil.isoformat(at(5)), "host": A, "epoch": EPOCH, "seq": 9}


@pytest.mark.parametrize("event_type", ["instance.rebooted", "instance.guest_agent"])
def test_a_reboot_or_the_guest_agent_is_history_but_no_last_fault(event_type):
    earlier = fold.last_fault_json("instance.watchdog", at(2), {"action": "reset"}, 1, at(2),
                                   A, EPOCH, 2)
    before = row(seq=3)._replace(last_fault=earlier)
    writes = run([fault(event_type, 4)], [before])
    assert written(writes).get(VM1, before).last_fault == earlier
    assert [f.event_type for f in writes.faults] == [event_type]


def test_the_last_fault_never_goes_back_whatever_order_the_faults_arrive_in():
    newer, older = fault("instance.io_error", 9), fault("instance.watchdog", 7)
    in_one_batch = written(run([newer, older], [row(seq=1)]))[VM1]
    assert last_fault(in_one_batch)["seq"] == 9
    # in two batches: the older arrives after the newer was stored
    first = written(run([newer], [row(seq=1)]))[VM1]
    second = run([older], [first])
    assert written(second) == {}  # the row, its last fault with it, stays as it is
    assert [j.outcome for j in second.journal] == ["applied"]  # recorded
    assert [f.seq for f in second.faults] == [7]  # as history


def test_once_the_guest_moved_its_new_hosts_faults_are_its_last():
    first = written(run([fault("instance.io_error", 90)], [row(seq=1)]))[VM1]
    late = written(run([fault("instance.watchdog", 3, host=B)], [first])).get(VM1, first)
    assert last_fault(late)["host"] == A  # B does not own it yet
    moved = written(run([life(Event.STARTED, StartedDetail.MIGRATED, 4, host=B),
                         life(Event.RESUMED, ResumedDetail.MIGRATED, 5, host=B),
                         fault("instance.watchdog", 6, host=B)], [first]))[VM1]
    assert moved.host == B and (last_fault(moved)["host"], last_fault(moved)["seq"]) == (B, 6)


def test_a_host_that_started_over_below_its_stored_fault_still_moves_it():
    stored = fold.last_fault_json("instance.watchdog", at(2), {"action": "reset"}, 1, at(2),
                                  A, EPOCH, 90)
    started_over = row(seq=0, epoch=EPOCH - 1000)._replace(last_fault=stored)
    writes = run([fault("instance.io_error", 5, epoch=EPOCH - 1000)], [started_over])
    assert last_fault(written(writes)[VM1])["event_type"] == "instance.io_error"


def test_a_stored_last_fault_that_cannot_be_read_is_replaced():
    writes = run([fault("instance.control_error", 4)], [row(seq=1)._replace(last_fault="{oops")])
    assert last_fault(written(writes)[VM1])["event_type"] == "instance.control_error"


# -- panics ------------------------------------------------------------------------------

@pytest.mark.parametrize(("detail", "reason"), [(CrashedDetail.PANICKED, "panicked"),
                                                (CrashedDetail.CRASHLOADED, "crashloaded")])
def test_a_panic_is_a_fault_and_the_last_one(detail, reason):
    writes = run([life(Event.CRASHED, detail, 5, DomainState.CRASHED, 1)], [row(seq=1)])
    after = written(writes)[VM1]
    assert (after.power_state, after.last_event_type) == ("crashed", "instance.crashed")
    assert after.state_reason == "panicked"  # the state read after it: CRASHED, panicked
    assert last_fault(after) == {
        "event_type": "instance.crashed", "occurred_at": timeutil.isoformat(at(5)),
        "reason": reason, "count": 1, "first_occurred_at": timeutil.isoformat(at(5)),
        "host": A, "epoch": EPOCH, "seq": 5}
    assert [(f.event_type, json.loads(f.fields), f.count) for f in writes.faults] == [
        ("instance.crashed", {"reason": reason}, 1)]
    assert writes.result.faults == {"instance.crashed": 1}


def test_a_guest_whose_emulator_failed_crashed_but_did_not_panic():
    writes = run([life(Event.STOPPED, StoppedDetail.FAILED, 5, DomainState.SHUTOFF, 6)],
                 [row(seq=1)])
    after = written(writes)[VM1]
    assert (after.power_state, after.state_reason, after.last_fault) == ("crashed", "failed", None)
    assert writes.faults == [] and not writes.result.faults


def test_a_batch_without_faults_writes_no_fault_rows():
    writes = run([life(Event.STARTED, StartedDetail.BOOTED, 2, DomainState.RUNNING, 1),
                  inventory(3, [(VM1, DomainState.RUNNING, 1)])], [])
    assert writes.faults == [] and not writes.result.faults


# -- why the instance is in its state ------------------------------------------------------

def test_state_reason_follows_the_events_that_set_the_state():
    steps = [
        (life(Event.STARTED, StartedDetail.BOOTED, 2, DomainState.RUNNING, 1), "running", "booted"),
        (life(Event.SUSPENDED, SuspendedDetail.IOERROR, 3, DomainState.PAUSED, 5), "paused", "ioerror"),
        (fault("instance.io_error", 4), "paused", "ioerror"),               # no state: kept
        (life(Event.RESUMED, ResumedDetail.UNPAUSED, 5), "running", "unpaused"),  # not read
        (life(Event.SUSPENDED, SuspendedDetail.WATCHDOG, 6, DomainState.PAUSED, 0), "paused",
         "watchdog"),
        (life(Event.SHUTDOWN, ShutdownDetail.GUEST, 7), "paused", "watchdog"),  # sets no state
        (life(Event.SHUTDOWN, ShutdownDetail.GUEST, 8, DomainState.SHUTDOWN, 1), "shutdown",
         "user"),                                           # the state read after it does
        (life(Event.STOPPED, StoppedDetail.DESTROYED, 9, DomainState.SHUTOFF, 2), "shutdown",
         "destroyed"),
        (life(Event.DEFINED, DefinedDetail.ADDED, 10), "shutdown", None),
        (life(Event.STARTED, StartedDetail.BOOTED, 11, DomainState.RUNNING, 99), "running", None),
    ]
    rows = []
    for note, state, reason in steps:
        writes = run([note], rows)
        rows = list(written(writes).values()) or rows
        assert (rows[0].power_state, rows[0].state_reason) == (state, reason), note.event_type


def test_a_stale_event_leaves_the_reason():
    current = row(state="paused", seq=9)._replace(state_reason="ioerror")
    writes = run([life(Event.RESUMED, ResumedDetail.UNPAUSED, 5, DomainState.RUNNING, 5)],
                 [current])
    assert writes.changed_instances == []


@pytest.mark.parametrize(("stored", "entry", "kept"), [
    (("paused", "ioerror"), (DomainState.PAUSED, 5), "ioerror"),      # says the same
    (("paused", "ioerror"), (DomainState.PAUSED, 1), None),           # paused for another
    (("paused", "ioerror"), (DomainState.PAUSED, 0), None),           # for a reason unknown
    (("paused", "ioerror"), (DomainState.RUNNING, 5), None),          # no longer paused
    (("running", None), (DomainState.RUNNING, 1), None),              # an inventory tells none
])
def test_an_inventory_keeps_the_reason_only_where_it_says_the_same(stored, entry, kept):
    state, reason = stored
    writes = run([inventory(20, [(VM1, *entry)])],
                 [row(state=state, seq=3)._replace(state_reason=reason)])
    after = written(writes)[VM1]
    assert (after.seq, after.state_reason) == (20, kept)


def test_an_instance_an_inventory_misses_loses_its_reason_not_its_faults():
    earlier = fold.last_fault_json("instance.watchdog", at(2), {"action": "reset"}, 1, at(2),
                                   A, EPOCH, 2)
    current = row(seq=3)._replace(state_reason="booted", reboots=4, last_fault=earlier)
    writes = run([inventory(20, [(VM2, DomainState.RUNNING, 1)])], [current])
    gone = written(writes)[VM1]
    assert (gone.deleted, gone.state_reason, gone.reboots, gone.last_fault) == (
        True, None, 4, earlier)


def test_a_batch_mixing_everything_counts_each_fault_type():
    notes = [life(Event.STARTED, StartedDetail.BOOTED, 1, DomainState.RUNNING, 1),
             fault("instance.rebooted", 2, count=5),
             fault("instance.io_error", 3, count=37, uuid=VM2),
             life(Event.SUSPENDED, SuspendedDetail.IOERROR, 4, DomainState.PAUSED, 5, uuid=VM2),
             fault("instance.guest_agent", 5),
             life(Event.CRASHED, CrashedDetail.PANICKED, 6, DomainState.CRASHED, 1)]
    writes = run(notes)
    rows = written(writes)
    assert (rows[VM1].power_state, rows[VM1].state_reason, rows[VM1].reboots) == (
        "crashed", "panicked", 5)
    assert last_fault(rows[VM1])["event_type"] == "instance.crashed"
    assert (rows[VM2].power_state, rows[VM2].state_reason) == ("paused", "ioerror")
    assert last_fault(rows[VM2])["count"] == 37
    assert writes.result.faults == {"instance.rebooted": 5, "instance.io_error": 37,
                                    "instance.guest_agent": 1, "instance.crashed": 1}
    assert [f.seq for f in writes.faults] == [2, 3, 5, 6]
