"""lifecycle_publisher.notifications: what the agent puts on the wire for an event, an
inventory and a heartbeat."""

import datetime
import re

import pytest

from lifecycle_common.wire import payloads
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    DomainState, Event, JobType, ShutoffReason, StartedDetail, StoppedDetail, SuspendedDetail,
    UndefinedDetail)
from lifecycle_publisher.translation import Observed, Transition

HOST = "compute-3"
EPOCH = 1_795_596_800
UUID = "3f9c2a1e-7b4d-4e8a-9c61-2d5f0b8e4a17"
# 2026-11-25T08:54:44.123456Z
MOMENT = datetime.datetime(2026, 11, 25, 8, 54, 44, 123456, tzinfo=datetime.timezone.utc)
WHEN = MOMENT.timestamp()

ISO_UTC_MICROSECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def event(kind: int, detail: int, seq: int = 77, occurred_at: float = WHEN) -> DomainEvent:
    return DomainEvent(seq=seq, occurred_at=occurred_at, uuid=UUID, name="vm-1",
                       event=kind, detail=detail)


# -- instance events ----------------------------------------------------------------

def test_instance_notification_is_stamped_with_host_epoch_and_seq():
    note = notifications.instance_notification(HOST, EPOCH, event(Event.STARTED, 0, seq=4242))
    p = note.payload
    assert isinstance(p, payloads.InstanceLifecyclePayload)
    assert (p.host, p.epoch, p.seq, p.uuid, p.name) == (HOST, EPOCH, 4242, UUID, "vm-1")
    assert note.publisher_id == "lifecycle-agent:compute-3"
    assert note.priority == "INFO"


@pytest.mark.parametrize(("kind", "detail", "event_type", "power_state"), [
    (Event.STARTED, StartedDetail.BOOTED, "instance.started", "running"),
    (Event.SUSPENDED, SuspendedDetail.PAUSED, "instance.paused", "paused"),
    (Event.RESUMED, 0, "instance.resumed", "running"),
    (Event.SHUTDOWN, 1, "instance.shutting_down", None),
    (Event.STOPPED, StoppedDetail.DESTROYED, "instance.stopped", "shutdown"),
    (Event.STOPPED, StoppedDetail.FAILED, "instance.crashed", "crashed"),
    (Event.PMSUSPENDED, 0, "instance.suspended", "suspended"),
    (Event.DEFINED, 0, "instance.defined", "shutdown"),
    (Event.UNDEFINED, UndefinedDetail.REMOVED, "instance.undefined", None),
    (Event.UNDEFINED, UndefinedDetail.RENAMED, "instance.ignored", None),
    (Event.STARTED, StartedDetail.MIGRATED, "instance.arriving", None),
    (Event.STOPPED, StoppedDetail.MIGRATED, "instance.migrated", None),
    (42, 0, "instance.ignored", None),
])
def test_event_type_and_power_state_are_the_translation(kind, detail, event_type, power_state):
    note = notifications.instance_notification(HOST, EPOCH, event(kind, detail))
    assert note.event_type == event_type
    assert note.payload.transition == event_type.removeprefix("instance.")
    assert note.payload.power_state == power_state


def test_the_previous_transition_is_taken_into_account():
    note = notifications.instance_notification(
        HOST, EPOCH, event(Event.UNDEFINED, UndefinedDetail.REMOVED),
        Observed(state=None), previous=Transition.MIGRATED)
    assert note.event_type == "instance.migrated"
    assert note.payload.power_state is None


def test_timestamps_are_utc_with_microseconds():
    note = notifications.instance_notification(HOST, EPOCH, event(Event.STARTED, 0))
    assert note.payload.occurred_at == "2026-11-25T08:54:44.123456+00:00"
    assert ISO_UTC_MICROSECONDS.match(note.payload.occurred_at)
    # the envelope timestamp as oslo.messaging's own notifier writes it: naive UTC
    assert note.timestamp == "2026-11-25 08:54:44.123456"


def test_a_whole_second_still_has_microseconds():
    whole = MOMENT.replace(microsecond=0).timestamp()
    note = notifications.instance_notification(HOST, EPOCH, event(Event.STARTED, 0,
                                                                  occurred_at=whole))
    assert note.payload.occurred_at == "2026-11-25T08:54:44.000000+00:00"
    assert note.timestamp == "2026-11-25 08:54:44.000000"


def test_libvirt_codes_are_named():
    note = notifications.instance_notification(
        HOST, EPOCH, event(Event.STOPPED, StoppedDetail.FAILED),
        Observed(DomainState.SHUTOFF, ShutoffReason.FAILED))
    p = note.payload
    assert (p.libvirt_event, p.libvirt_detail) == ("STOPPED", "FAILED")
    assert (p.libvirt_event_code, p.libvirt_detail_code) == (5, 5)
    assert (p.libvirt_state, p.libvirt_reason) == ("SHUTOFF", 6)
    assert p.migration_job is None


def test_unknown_libvirt_codes_keep_their_numbers():
    note = notifications.instance_notification(HOST, EPOCH, event(12, 3),
                                               Observed(state=9, reason=1, job=17))
    p = note.payload
    assert (p.libvirt_event, p.libvirt_detail) == ("UNKNOWN_12", "UNKNOWN_3")
    assert (p.libvirt_event_code, p.libvirt_detail_code) == (12, 3)
    assert (p.libvirt_state, p.migration_job) == ("UNKNOWN_9", "UNKNOWN_17")
    note = notifications.instance_notification(HOST, EPOCH, event(Event.STARTED, 99))
    assert note.payload.libvirt_detail == "UNKNOWN_99"


def test_the_domain_read_after_the_event_is_reported():
    note = notifications.instance_notification(
        HOST, EPOCH, event(Event.SUSPENDED, SuspendedDetail.MIGRATED),
        Observed(DomainState.PAUSED, 2, JobType.UNBOUNDED))
    p = note.payload
    assert note.event_type == "instance.migrating"
    assert (p.libvirt_state, p.libvirt_reason, p.migration_job) == ("PAUSED", 2, "UNBOUNDED")


def test_nothing_read_leaves_the_state_fields_empty():
    for observed in (None, Observed(state=None)):
        p = notifications.instance_notification(
            HOST, EPOCH, event(Event.UNDEFINED, 0), observed).payload
        assert (p.libvirt_state, p.libvirt_reason, p.migration_job) == (None, None, None)


# -- inventory ------------------------------------------------------------------------

def test_inventory_lists_every_domain_with_its_power_state():
    inventory = Inventory(seq=900, occurred_at=WHEN, reason="reconnect", domains=(
        DomainSnapshot(UUID, "vm-1", DomainState.RUNNING, 1),
        DomainSnapshot("b82e6d04-51c3-4f0a-8d9e-6a7c3e21f590", "vm-2", DomainState.SHUTOFF,
                       ShutoffReason.CRASHED),
        DomainSnapshot("e1a47c9b-0d2f-4b6e-a358-9f0c71d8b2e4", "vm-3", DomainState.PMSUSPENDED, 0),
    ))
    note = notifications.inventory_notification(HOST, EPOCH, inventory)
    p = note.payload
    assert note.event_type == "host.inventory"
    assert note.publisher_id == "lifecycle-agent:compute-3"
    assert (p.host, p.epoch, p.seq, p.reason) == (HOST, EPOCH, 900, "reconnect")
    assert p.occurred_at == "2026-11-25T08:54:44.123456+00:00"
    assert note.timestamp == "2026-11-25 08:54:44.123456"
    assert p.instances == (
        payloads.InventoryEntry(UUID, "vm-1", "running", "RUNNING", 1),
        payloads.InventoryEntry("b82e6d04-51c3-4f0a-8d9e-6a7c3e21f590", "vm-2", "crashed",
                                "SHUTOFF", 3),
        payloads.InventoryEntry("e1a47c9b-0d2f-4b6e-a358-9f0c71d8b2e4", "vm-3", "suspended",
                                "PMSUSPENDED", 0),
    )


def test_an_empty_host_has_an_empty_inventory():
    note = notifications.inventory_notification(
        HOST, EPOCH, Inventory(seq=1, occurred_at=WHEN, reason="start", domains=()))
    assert note.payload.instances == ()


# -- heartbeat ------------------------------------------------------------------------

def test_heartbeat_carries_the_last_seq_and_status():
    note = notifications.heartbeat_notification(HOST, EPOCH, last_seq=1234, interval=2.5,
                                                status="stopping", libvirt_connected=False,
                                                now=MOMENT)
    p = note.payload
    assert note.event_type == "host.heartbeat"
    assert isinstance(p, payloads.HostHeartbeatPayload)
    assert (p.host, p.epoch, p.last_seq, p.interval, p.status, p.libvirt_connected) == (
        HOST, EPOCH, 1234, 2.5, "stopping", False)
    assert p.occurred_at == "2026-11-25T08:54:44.123456+00:00"
    assert note.timestamp == "2026-11-25 08:54:44.123456"


def test_heartbeat_without_a_moment_is_stamped_now_in_utc():
    before = datetime.datetime.now(datetime.timezone.utc)
    note = notifications.heartbeat_notification(HOST, EPOCH, 0, 10.0, "running", True)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert ISO_UTC_MICROSECONDS.match(note.payload.occurred_at)
    assert before <= datetime.datetime.fromisoformat(note.payload.occurred_at) <= after


def test_a_moment_in_another_zone_is_written_in_utc():
    paris = datetime.timezone(datetime.timedelta(hours=1))
    note = notifications.heartbeat_notification(HOST, EPOCH, 0, 10.0, "running", True,
                                                now=MOMENT.astimezone(paris))
    assert note.payload.occurred_at == "2026-11-25T08:54:44.123456+00:00"
    assert note.timestamp == "2026-11-25 08:54:44.123456"


def test_every_built_notification_decodes():
    from lifecycle_common.wire import decode, encode
    notes = [
        notifications.instance_notification(HOST, EPOCH, event(Event.STARTED, 0),
                                            Observed(DomainState.RUNNING, 1)),
        notifications.inventory_notification(
            HOST, EPOCH, Inventory(seq=1, occurred_at=WHEN, reason="periodic", domains=(
                DomainSnapshot(UUID, "vm-1", DomainState.PAUSED, 1),))),
        notifications.heartbeat_notification(HOST, EPOCH, 0, 10.0, "running", True, now=MOMENT),
    ]
    for note in notes:
        assert decode(encode(note)) == note


def test_a_name_the_wire_cannot_carry_is_cut_to_fit_and_still_decodes():
    """libvirt sets no bound on a domain's name; the wire does (the column it lands
    in). The uuid keys the instance, so the event goes out with the name cut."""
    from lifecycle_common.wire import decode, encode, limits
    long_name = "vm-" + "x" * 400
    domain_event = DomainEvent(seq=5, occurred_at=WHEN, uuid=UUID, name=long_name,
                               event=Event.STARTED, detail=0)
    note = notifications.instance_notification(HOST, EPOCH, domain_event)
    inventory = notifications.inventory_notification(
        HOST, EPOCH, Inventory(seq=6, occurred_at=WHEN, reason="periodic", domains=(
            DomainSnapshot(UUID, long_name, DomainState.RUNNING, 1),)))
    assert note.payload.name == long_name[:limits.NAME_LENGTH]
    assert inventory.payload.instances[0].name == long_name[:limits.NAME_LENGTH]
    assert decode(encode(note)) == note and decode(encode(inventory)) == inventory
