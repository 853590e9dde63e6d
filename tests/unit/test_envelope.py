"""wire.decode: what it refuses, with which reason, and what newer payloads it reads."""

import copy
import dataclasses
import json

import pytest

from lifecycle_common.wire import WireError, decode, encode, payloads, schemas

KEY = payloads.OBJECT_KEY


def sample(event_type: str) -> dict:
    return json.loads((schemas.SAMPLE_DIR / f"{event_type}.json").read_text())


def wrap(message) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


def started(**data_changes) -> dict:
    message = copy.deepcopy(sample("instance.started"))
    message["payload"][f"{KEY}.data"].update(data_changes)
    return message


def with_payload(message: dict, **changes) -> dict:
    message = copy.deepcopy(message)
    message["payload"].update({f"{KEY}.{k}": v for k, v in changes.items()})
    return message


def without(message: dict, *path: str) -> dict:
    message = copy.deepcopy(message)
    inner = message
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return message


# body -> a fragment the reason must contain
REFUSED = {
    "not JSON": (b"\x00not json", "body is not JSON"),
    "not UTF-8": (b"\xff\xfe{", "body is not JSON"),
    "not an object": (b"[1, 2]", "body is not a JSON object"),
    "no oslo.message": (json.dumps({"oslo.version": "2.0"}).encode(), "no oslo.message"),
    "wrong oslo.version": (
        json.dumps({"oslo.version": "1.0", "oslo.message": "{}"}).encode(),
        "envelope version '1.0' is not 2.0"),
    "no oslo.version": (
        json.dumps({"oslo.message": "{}"}).encode(), "envelope version None is not 2.0"),
    "oslo.message not JSON": (
        json.dumps({"oslo.version": "2.0", "oslo.message": "{oops"}).encode(),
        "oslo.message is not JSON"),
    "oslo.message not an object": (wrap([1]), "oslo.message is not a JSON object"),
    "no event_type": (wrap(without(sample("instance.started"), "event_type")),
                      "message has no event_type"),
    "unknown event_type": (wrap({**sample("instance.started"), "event_type": "volume.attached"}),
                           "unknown event_type 'volume.attached'"),
    "bare instance. prefix": (wrap({**sample("instance.started"), "event_type": "instance."}),
                              "unknown event_type 'instance.'"),
    "payload not an object": (wrap({**sample("instance.started"), "payload": "running"}),
                              "instance.started: payload is not an object"),
    "wrong payload name": (
        wrap(with_payload(sample("instance.started"), name="HostHeartbeatPayload")),
        "instance.started: payload is 'HostHeartbeatPayload', expected 'InstanceLifecyclePayload'"),
    "heartbeat carrying an instance payload": (
        wrap({**sample("instance.started"), "event_type": "host.heartbeat"}),
        "expected 'HostHeartbeatPayload'"),
    "no version": (wrap(without(sample("instance.started"), "payload", f"{KEY}.version")),
                   f"lacks {KEY}.version or {KEY}.data"),
    "data not an object": (wrap(with_payload(sample("instance.started"), data=[])),
                           f"lacks {KEY}.version or {KEY}.data"),
    "unsupported major": (wrap(with_payload(sample("instance.started"), version="2.0")),
                          "InstanceLifecyclePayload version 2.0 is not supported"),
    "older major": (wrap(with_payload(sample("host.heartbeat"), version="0.9")),
                    "HostHeartbeatPayload version 0.9 is not supported"),
    "version not MAJOR.MINOR": (wrap(with_payload(sample("instance.started"), version="latest")),
                                "version latest is not supported"),
    "field of the wrong type": (wrap(started(seq="eleven")), "seq: 'eleven' is not of type"),
    "field below its minimum": (wrap(started(epoch=-1)), "epoch: -1 is less than the minimum"),
    "unknown transition": (wrap(started(transition="exploded")), "transition: 'exploded'"),
    "missing field": (wrap(without(started(), "payload", f"{KEY}.data", "uuid")),
                      "payload: 'uuid' is a required property"),
    "extra field in a known version": (wrap(started(colour="blue")), "'colour' was unexpected"),
    # Schema-valid in shape, hostile in value: each once raised inside the consumer's
    # transaction or stopped it.
    "occurred_at not a timestamp": (wrap(started(occurred_at="yesterday")),
                                    "occurred_at: 'yesterday' is not a 'date-time'"),
    "a leap second": (wrap(started(occurred_at="2026-12-31T23:59:60+00:00")), "'date-time'"),
    "a timestamp with no offset": (wrap(started(occurred_at="2026-11-25T08:54:44.123456")),
                                   "'date-time'"),
    "a timestamp before 1970": (wrap(started(occurred_at="0001-01-01T00:00:00+00:00")),
                                "'date-time'"),
    "a timestamp past 9999 in UTC": (wrap(started(occurred_at="9999-12-31T23:59:59-01:00")),
                                     "'date-time'"),
    "an epoch beyond BIGINT": (wrap(started(epoch=2**63)), "epoch: 9223372036854775808 is greater"),
    "a seq of 30 digits": (b'{"oslo.version":"2.0","oslo.message":"' + json.dumps(
        started(seq=123)).replace('"seq": 123', '"seq": 123456789012345678901234567890')
        .replace('"', '\\"').encode() + b'"}', "seq: 1.2345678901234568e+29 is greater"),
    "a libvirt code beyond an int": (wrap(started(libvirt_event_code=2**31)), "libvirt_event_code"),
    "a name with NUL": (wrap(started(name="vm\x00one")), "name: 'vm\\x00one' does not match"),
    "a name of 256 characters": (wrap(started(name="n" * 256)), "name: 'nnnnn"),
    "a host with a space": (wrap(started(host="compute 1")), "host: 'compute 1' does not match"),
    "a host ending in a newline": (wrap(started(host="compute-1\n")),  # jsonschema passes it
                                   "data.host must match pattern"),
    "a host of 256 characters": (wrap(started(host="h" * 256)), "is too long"),
    "an event type its transition is not": (
        wrap({**started(), "event_type": "instance.migrated"}),
        "instance.migrated: the payload's transition is 'started'"),
    "a body over 32 MiB": (b" " * (32 * 1024 * 1024 + 1), "larger than the 33554432"),
}


@pytest.mark.parametrize(("body", "reason"), list(REFUSED.values()), ids=list(REFUSED))
def test_refused_with_a_clear_reason(body, reason):
    with pytest.raises(WireError) as caught:
        decode(body)
    assert reason in str(caught.value)


def test_a_reason_quoting_a_huge_value_is_clipped():
    with pytest.raises(WireError) as caught:
        decode(wrap(started(name="n" * 300_000)))
    assert len(str(caught.value)) < 500
    assert str(caught.value).endswith(" characters)")


def test_an_integral_float_is_read_as_an_integer():
    note = decode(wrap(started(seq=11.0, epoch=1_795_596_800.0)))
    assert (note.payload.seq, note.payload.epoch) == (11, 1_795_596_800)
    assert type(note.payload.seq) is int and type(note.payload.epoch) is int


def test_a_bad_field_in_an_inventory_entry_is_named_by_its_path():
    message = copy.deepcopy(sample("host.inventory"))
    message["payload"][f"{KEY}.data"]["instances"][1]["power_state"] = "exploded"
    with pytest.raises(WireError, match=r"host\.inventory: HostInventoryPayload 1\.1: "
                                        r"instances/1/power_state: 'exploded'"):
        decode(wrap(message))


def test_wire_error_is_a_value_error():
    assert issubclass(WireError, ValueError)


def test_decode_accepts_text_as_well_as_bytes():
    body = wrap(sample("host.heartbeat"))
    assert decode(body.decode()) == decode(body)


# -- versions -----------------------------------------------------------------------

def test_a_newer_minor_with_an_extra_field_decodes():
    message = with_payload(started(boot_id="9f1c", cpu_model="EPYC"), version="1.7")
    note = decode(wrap(message))
    assert isinstance(note.payload, payloads.InstanceLifecyclePayload)
    assert note.payload.seq == sample("instance.started")["payload"][f"{KEY}.data"]["seq"]
    assert note.payload.transition == "started"
    assert not hasattr(note.payload, "boot_id")


def test_a_newer_minor_is_still_validated_for_the_fields_this_code_knows():
    message = with_payload(started(seq="eleven", boot_id="9f1c"), version="1.7")
    with pytest.raises(WireError, match="seq"):
        decode(wrap(message))


def test_a_newer_minor_of_a_host_payload_decodes():
    message = copy.deepcopy(sample("host.heartbeat"))
    message["payload"][f"{KEY}.data"]["load_average"] = 0.42
    message = with_payload(message, version="1.9")
    note = decode(wrap(message))
    assert isinstance(note.payload, payloads.HostHeartbeatPayload)
    assert note.payload.status == "running"


def test_a_newer_major_with_the_same_fields_does_not_decode():
    with pytest.raises(WireError, match="version 2.0 is not supported"):
        decode(wrap(with_payload(sample("instance.started"), version="2.0")))


def test_an_older_minor_decodes_with_the_fields_it_lacks_left_empty():
    message = copy.deepcopy(sample("instance.started"))
    data = message["payload"][f"{KEY}.data"]
    for added_in_1_1 in ("libvirt_state", "libvirt_reason", "migration_job"):
        del data[added_in_1_1]
    note = decode(wrap(with_payload(message, version="1.0")))
    assert note.payload.power_state == "running"
    assert (note.payload.libvirt_state, note.payload.libvirt_reason,
            note.payload.migration_job) == (None, None, None)


def test_an_older_minor_is_read_with_its_own_schema():
    # 1.0 did not have 'migration_job': a 1.0 payload carrying it is not valid 1.0
    message = with_payload(sample("instance.started"), version="1.0")
    with pytest.raises(WireError, match="InstanceLifecyclePayload 1.0"):
        decode(wrap(message))


def test_a_newer_minor_with_an_extra_field_in_an_inventory_entry_decodes():
    message = copy.deepcopy(sample("host.inventory"))
    data = message["payload"][f"{KEY}.data"]
    data["cpu_count"] = 64
    for entry in data["instances"]:
        entry["flavor"] = "m1.small"
    note = decode(wrap(with_payload(message, version="1.4")))
    assert isinstance(note.payload, payloads.HostInventoryPayload)
    assert [e.uuid for e in note.payload.instances] == [e["uuid"] for e in data["instances"]]
    assert all(isinstance(e, payloads.InventoryEntry) for e in note.payload.instances)


def test_an_extra_field_in_an_inventory_entry_of_a_known_version_is_refused():
    message = copy.deepcopy(sample("host.inventory"))
    message["payload"][f"{KEY}.data"]["instances"][0]["flavor"] = "m1.small"
    with pytest.raises(WireError, match="instances/0"):
        decode(wrap(message))


def test_encoded_body_takes_no_more_memory_than_its_length():
    """orjson's own result keeps a buffer of 8 KB or more; an agent holding thousands
    of bodies must hold their bytes, not ten times as much."""
    import tracemalloc

    note = decode(wrap(sample("instance.started")))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bodies = [encode(note) for _ in range(200)]
        per_body = (tracemalloc.get_traced_memory()[0] - before) / len(bodies)
    finally:
        tracemalloc.stop()
    assert per_body < 2 * len(bodies[0]), f"{per_body:.0f} bytes held per {len(bodies[0])}-byte body"


def test_prepare_compiles_every_known_schema_version():
    schemas._compiled.cache_clear()
    schemas.prepare()
    compiled = schemas._compiled.cache_info().currsize
    assert compiled == sum(len(v) for v in schemas.known_versions().values())


@pytest.mark.parametrize("event_type", ["instance.started", "host.inventory", "host.heartbeat"])
def test_payload_data_holds_every_field_in_declaration_order(event_type):
    note = decode(wrap(sample(event_type)))
    data = payloads.to_primitive(note.payload)[f"{KEY}.data"]
    assert list(data) == [f.name for f in dataclasses.fields(note.payload)]
    if event_type == "host.inventory":
        entry_fields = [f.name for f in dataclasses.fields(payloads.InventoryEntry)]
        assert [list(e) for e in data["instances"]] == [entry_fields] * len(data["instances"])
