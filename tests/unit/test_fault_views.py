"""How the CLI shows a fault in one line (consumer/cli/fault_views.py)."""

import pytest

from consumer.cli import fault_views

IO_ERROR = {"event_type": "instance.io_error", "occurred_at": "2026-11-25T08:55:16.414567+00:00",
            "device": "virtio-disk0", "path": "/var/lib/nova/instances/x/disk",
            "action": "pause", "reason": "enospc", "count": 37,
            "first_occurred_at": "2026-11-25T08:55:15.903311+00:00", "host": "compute-01",
            "epoch": 1795596800, "seq": 1047}


@pytest.mark.parametrize("fields, count, text", [
    ({"action": "pause"}, 1, "pause"),
    ({"action": "pause"}, None, "pause"),
    ({}, 3, "x3"),
    ({}, 1, ""),
    ({"device": "virtio-disk0", "path": "/a/very/long/path", "action": "pause",
      "reason": "enospc"}, 37, "virtio-disk0 pause enospc x37"),
    ({"recipient": "guest", "action": "inject", "action_required": True, "recursive": False},
     1, "guest inject action_required"),
    ({"recipient": "hypervisor", "action": "ignore", "action_required": False,
      "recursive": True}, 2, "hypervisor ignore recursive x2"),
    ({"reason": "panicked"}, 1, "panicked"),
])
def test_detail(fields, count, text):
    assert fault_views.detail(fields, count) == text


def test_fault_detail_of_an_events_fault_object():
    assert fault_views.fault_detail(None) is None
    assert fault_views.fault_detail({"count": 2, "state": "disconnected",
                                     "reason": "domain_stopped"}) == (
        "disconnected domain_stopped x2")


def test_last_fault_cell_and_text():
    assert fault_views.last_fault_cell(None) is None
    assert fault_views.last_fault_cell(IO_ERROR) == "io_error 2026-11-25 08:55:16"
    assert fault_views.last_fault_cell({"event_type": "instance.crashed",
                                        "occurred_at": "2026-11-25T08:55:49.373456+00:00",
                                        "reason": "panicked"}) == "crashed 2026-11-25 08:55:49"
    assert fault_views.last_fault_text(None) is None
    assert fault_views.last_fault_text(IO_ERROR) == (
        "instance.io_error at 2026-11-25T08:55:16.414567+00:00: "
        "virtio-disk0 pause enospc x37")
    assert fault_views.last_fault_text({"event_type": "instance.control_error",
                                        "occurred_at": "t", "count": 1}) == (
        "instance.control_error at t")


def test_short_type():
    assert fault_views.short_type("instance.watchdog") == "watchdog"
    assert fault_views.short_type("host.inventory") == "host.inventory"
