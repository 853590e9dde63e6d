"""The bounds of the wire (``lifecycle_common/wire/limits.py``), every schema version and
the consumer's columns agree: what a schema accepts, every backend stores."""

import json

import pytest

from consumer.db.tables import hosts, instances, journal
from lifecycle_common.wire import limits, schemas

SCHEMA_FILES = sorted(schemas.SCHEMA_DIR.glob("*.json"))


def _fields(schema: dict):
    """(name, property schema) of every field, inventory entries' fields included."""
    for name, prop in schema["properties"].items():
        yield name, prop
        if name == "instances":
            yield from prop["items"]["properties"].items()


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_every_field_is_bounded(path):
    for name, prop in _fields(json.loads(path.read_text())):
        kinds = prop.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if "string" in kinds:
            assert "maxLength" in prop or "pattern" in prop and "{" in prop["pattern"], name
        if "integer" in kinds:
            assert "maximum" in prop and "minimum" in prop, name
        if "number" in kinds:
            assert "maximum" in prop, name
        if "array" in kinds:
            assert prop["maxItems"] == limits.INVENTORY_ENTRIES, name


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.stem)
def test_bounds_are_the_limits(path):
    expected = {
        "host": {"maxLength": limits.HOST_LENGTH, "pattern": limits.HOST_PATTERN},
        "name": {"maxLength": limits.NAME_LENGTH, "pattern": limits.NO_NUL_PATTERN},
        "epoch": {"maximum": limits.INT64_MAX},
        "seq": {"maximum": limits.INT64_MAX},
        "last_seq": {"maximum": limits.INT64_MAX},
        "occurred_at": {"maxLength": limits.TIMESTAMP_LENGTH, "format": "date-time"},
        "libvirt_event_code": {"maximum": limits.INT32_MAX},
        "libvirt_detail_code": {"maximum": limits.INT32_MAX},
        "libvirt_reason": {"maximum": limits.INT32_MAX},
        "libvirt_event": {"maxLength": limits.LABEL_LENGTH},
        "libvirt_detail": {"maxLength": limits.LABEL_LENGTH},
        "libvirt_state": {"maxLength": limits.LABEL_LENGTH},
        "migration_job": {"maxLength": limits.LABEL_LENGTH},
        "interval": {"maximum": limits.HEARTBEAT_INTERVAL_MAX},
    }
    for name, prop in _fields(json.loads(path.read_text())):
        for key, value in expected.get(name, {}).items():
            assert prop.get(key) == value, f"{path.stem} {name} {key}"


def test_columns_hold_what_the_schemas_allow():
    assert hosts.c.name.type.length == limits.HOST_LENGTH
    assert instances.c.host.type.length == limits.HOST_LENGTH
    assert journal.c.host.type.length == limits.HOST_LENGTH
    assert instances.c.name.type.length == limits.NAME_LENGTH
    assert journal.c.event_type.type.length >= len("instance.") + max(
        len(t) for t in json.loads((schemas.SCHEMA_DIR / "InstanceLifecyclePayload.1.1.json")
                                   .read_text())["properties"]["transition"]["enum"])
    assert instances.c.last_event_type.type.length == journal.c.event_type.type.length
    assert instances.c.uuid.type.length == 36
    # agent_status holds every heartbeat status
    statuses = json.loads((schemas.SCHEMA_DIR / "HostHeartbeatPayload.1.1.json")
                          .read_text())["properties"]["status"]["enum"]
    assert max(map(len, statuses)) <= hosts.c.agent_status.type.length


@pytest.mark.parametrize(("host", "problem"), [
    ("compute-1", None), ("Compute_01.example.org", None), ("h" * 255, None),
    ("", "is empty"), ("h" * 256, "longer than 255"), ("compute 1", "may hold only"),
    ("-compute", "must begin"), ("compute-1\n", "may hold only"), ("héte", "may hold only"),
])
def test_host_problem(host, problem):
    found = limits.host_problem(host)
    assert (found is None) if problem is None else (problem in found)


def test_clip_name_keeps_a_name_that_fits_and_cuts_one_that_does_not():
    assert limits.clip_name("instance-0000001a") == "instance-0000001a"
    assert limits.clip_name("x" * 300) == "x" * limits.NAME_LENGTH
    assert limits.clip_name("a\x00b") == "ab"
