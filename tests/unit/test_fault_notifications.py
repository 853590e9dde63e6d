"""Fault records -> notifications: each fault's payload passes its schema (a round trip
through wire.encode and wire.decode, which validates), codes are named in lower case or
``unknown_<code>``, libvirt's free text is clipped to what the wire takes."""

import pytest

from lifecycle_common import wire
from lifecycle_common.wire import limits, payloads
from lifecycle_common.wire.vocabulary import Fault
from lifecycle_publisher.domain_event import DomainFault
from lifecycle_publisher.notifications import fault_notification

VM = "6695eb01-f6a4-8304-79aa-97f2502e193f"
AT = 1795596916.414567


def record(kind, codes=(), **fields):
    return DomainFault(seq=fields.pop("seq", 9), occurred_at=AT, uuid=VM,
                       name=fields.pop("name", "vm-1"), fault=kind, codes=codes, **fields)


def round_trip(item):
    note = fault_notification("compute-1", 7, item)
    decoded = wire.decode(wire.encode(note))
    assert decoded.payload == note.payload
    return decoded


CASES = {
    "rebooted": (Fault.REBOOTED, (), {}),
    "watchdog": (Fault.WATCHDOG, (1,), {"action": "pause"}),
    "watchdog inject_nmi": (Fault.WATCHDOG, (6,), {"action": "inject_nmi"}),
    "io_error": (Fault.IO_ERROR, ("/var/lib/disk.img", "virtio-disk0", 1, "enospc"),
                 {"device": "virtio-disk0", "path": "/var/lib/disk.img", "action": "pause",
                  "reason": "enospc"}),
    "io_error report": (Fault.IO_ERROR, ("p", "ide0-0-0", 2, ""),
                        {"device": "ide0-0-0", "path": "p", "action": "report", "reason": ""}),
    "control_error": (Fault.CONTROL_ERROR, (), {}),
    "memory_failure": (Fault.MEMORY_FAILURE, (1, 2, 3),
                       {"recipient": "guest", "action": "fatal", "action_required": True,
                        "recursive": True}),
    "memory_failure no flags": (Fault.MEMORY_FAILURE, (0, 0, 0),
                                {"recipient": "hypervisor", "action": "ignore",
                                 "action_required": False, "recursive": False}),
    "memory_failure recursive": (Fault.MEMORY_FAILURE, (0, 3, 2),
                                 {"recipient": "hypervisor", "action": "reset",
                                  "action_required": False, "recursive": True}),
    "guest_agent": (Fault.GUEST_AGENT, (1, 1), {"state": "connected",
                                                "reason": "domain_started"}),
    "guest_agent gone": (Fault.GUEST_AGENT, (2, 2), {"state": "disconnected",
                                                     "reason": "channel"}),
}


@pytest.mark.parametrize(("kind", "codes", "fields"), CASES.values(), ids=list(CASES))
def test_each_fault_passes_its_schema_with_its_fields_named(kind, codes, fields):
    note = round_trip(record(kind, codes))
    assert note.event_type == kind.event_type == f"instance.{kind.value}"
    assert isinstance(note.payload, payloads.FAULT_PAYLOADS[kind])
    assert payloads.fault_fields(note.payload) == fields
    p = note.payload
    assert (p.uuid, p.name, p.host, p.epoch, p.seq, p.count) == (VM, "vm-1", "compute-1", 7, 9, 1)
    assert p.occurred_at == p.first_occurred_at == "2026-11-25T08:55:16.414567+00:00"
    assert note.publisher_id == "lifecycle-agent:compute-1"
    assert note.timestamp == "2026-11-25 08:55:16.414567"


def test_a_summary_says_how_many_and_when_the_first_was():
    note = round_trip(record(Fault.IO_ERROR, ("/d", "vda", 1, "eio"), seq=50,
                             count=37, first_occurred_at=AT - 0.5))
    assert (note.payload.seq, note.payload.count) == (50, 37)
    assert note.payload.first_occurred_at == "2026-11-25T08:55:15.914567+00:00"
    assert note.payload.occurred_at == "2026-11-25T08:55:16.414567+00:00"


UNKNOWN = {
    "watchdog": (Fault.WATCHDOG, (42,), {"action": "unknown_42"}),
    "io_error": (Fault.IO_ERROR, ("/d", "vda", 9, "x"),
                 {"device": "vda", "path": "/d", "action": "unknown_9", "reason": "x"}),
    "memory_failure": (Fault.MEMORY_FAILURE, (5, 77, 4 | 1),
                       {"recipient": "unknown_5", "action": "unknown_77",
                        "action_required": True, "recursive": False}),
    "guest_agent": (Fault.GUEST_AGENT, (0, 3), {"state": "unknown_0", "reason": "unknown_3"}),
    "negative": (Fault.WATCHDOG, (-1,), {"action": "unknown_minus_1"}),
}


@pytest.mark.parametrize(("kind", "codes", "fields"), UNKNOWN.values(), ids=list(UNKNOWN))
def test_a_code_this_agent_does_not_name_is_unknown_with_its_number(kind, codes, fields):
    assert payloads.fault_fields(round_trip(record(kind, codes)).payload) == fields


def test_libvirt_free_text_is_clipped_and_a_missing_path_is_empty():
    long_path = "/" + "p" * 5000
    note = round_trip(record(Fault.IO_ERROR, (long_path, "d\x00" * 200, 1, "r" * 300),
                             name="n" * 300))
    p = note.payload
    assert p.path == long_path[:limits.FAULT_PATH_LENGTH]
    assert p.device == "d" * 200
    assert p.reason == "r" * limits.FAULT_TEXT_LENGTH
    assert p.name == "n" * limits.NAME_LENGTH
    for missing in (None, ""):
        assert round_trip(record(Fault.IO_ERROR, (missing, None, 0, None))).payload.path == ""
