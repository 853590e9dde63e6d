"""lifecycle_webhook.cloudevents writes requests the official CloudEvents SDK reads, in
both content modes, with every attribute the contract promises, for every sample of
the wire."""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1.http import from_http as v1_from_http

from lifecycle_common.wire import decode, payloads, schemas, vocabulary
from lifecycle_webhook import cloudevents as ce

SAMPLES = sorted(schemas.SAMPLE_DIR.glob("*.json"))
UUID = "3f9c2a1e-7b4d-4e8a-9c61-2d5f0b8e4a17"


def sample_note(name: str):
    message = json.loads((schemas.SAMPLE_DIR / f"{name}.json").read_text())
    return decode(json.dumps({"oslo.version": "2.0",
                              "oslo.message": json.dumps(message)}).encode())


def as_json(value):
    """``value`` as JSON gives it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def with_payload(note, **changes):
    return dataclasses.replace(note, payload=dataclasses.replace(note.payload, **changes))


def parse(request: ce.Request):
    """The event as the SDK's current API reads the request (mode auto-detected)."""
    return ce_http.from_http(ce_http.HTTPMessage(dict(request.headers), request.body),
                             JSONFormat())


def sdk_attributes(event) -> dict:
    attrs = dict(event.get_attributes())
    attrs["time"] = attrs["time"].isoformat() if "time" in attrs else None
    return attrs


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("mode", ce.MODES)
def test_every_sample_encodes_to_an_event_the_sdk_reads(path, mode):
    note = sample_note(path.stem)
    request = ce.encode(note, mode)
    event = parse(request)
    assert event.get_specversion() == "1.0"
    assert event.get_type() == "io.libvirt-lifecycle." + path.stem
    assert event.get_source() == "urn:libvirt-lifecycle:host:" + note.payload.host
    assert event.get_id() == ce.event_id(note)
    assert event.get_data() == as_json(payloads.to_primitive(note.payload))
    assert event.get_time() == datetime.datetime.fromisoformat(note.payload.occurred_at)
    assert event.get_dataschema() == (f"urn:libvirt-lifecycle:schema:{note.payload.NAME}:"
                                      f"{note.payload.VERSION}")
    assert event.get_datacontenttype() == "application/json"
    assert event.get_extension("partitionkey") == ce.partition_key(note)
    # The classic API of the SDK reads it too.
    legacy = v1_from_http(dict(request.headers), request.body)
    assert legacy["id"] == event.get_id()
    assert legacy.data == event.get_data()


@pytest.mark.parametrize("mode", ce.MODES)
def test_instance_event_attributes(mode):
    note = sample_note("instance.started")
    event = parse(ce.encode(note, mode))
    assert sdk_attributes(event) == {
        "specversion": "1.0",
        "id": "compute-01:1795596800:1042",
        "source": "urn:libvirt-lifecycle:host:compute-01",
        "type": "io.libvirt-lifecycle.instance.started",
        "subject": UUID,
        "time": "2026-11-25T08:54:51.373456+00:00",
        "datacontenttype": "application/json",
        "dataschema": "urn:libvirt-lifecycle:schema:InstanceLifecyclePayload:1.1",
        "sequence": "00000000001795596800-00000000000000001042",
        "partitionkey": UUID,
    }
    data = event.get_data()
    assert data["lifecycle_object.name"] == "InstanceLifecyclePayload"
    assert data["lifecycle_object.version"] == "1.1"
    assert data["lifecycle_object.data"]["transition"] == "started"


def test_host_events_take_the_host_as_subject_and_partition():
    inventory = ce.attributes(sample_note("host.inventory"))
    assert (inventory["subject"], inventory["partitionkey"]) == ("compute-01", "compute-01")
    assert inventory["id"] == "compute-01:1795596800:1040"
    assert inventory["sequence"] == "00000000001795596800-00000000000000001040"
    heartbeat_note = sample_note("host.heartbeat")
    heartbeat = ce.attributes(heartbeat_note)
    assert (heartbeat["subject"], heartbeat["partitionkey"]) == ("compute-01", "compute-01")
    # No number of its own: the message id, and no sequence.
    assert heartbeat["id"] == heartbeat_note.message_id
    assert "sequence" not in heartbeat


def test_fault_events_are_numbered_and_partitioned_by_instance():
    note = sample_note(vocabulary.Fault.WATCHDOG.event_type)
    attrs = ce.attributes(note)
    assert attrs["partitionkey"] == attrs["subject"] == note.payload.uuid
    assert attrs["id"] == f"{note.payload.host}:{note.payload.epoch}:{note.payload.seq}"


def test_the_id_is_the_same_for_every_redelivery_of_one_event():
    note = sample_note("instance.stopped")
    again = dataclasses.replace(note, message_id="another-delivery",
                                timestamp="2026-11-25 09:00:00.000000")
    assert ce.event_id(again) == ce.event_id(note)
    assert ce.encode(again, ce.STRUCTURED) == ce.encode(note, ce.STRUCTURED)
    later = with_payload(note, seq=note.payload.seq + 1)
    assert ce.event_id(later) != ce.event_id(note)


def test_sequence_orders_as_strings_as_epoch_and_seq_do_as_numbers():
    pairs = [(0, 0), (0, 9), (0, 10), (1, 0), (9, 99), (10, 1), (1795596800, 1042),
             (10**19, 10**19 + 5)]
    assert sorted(pairs, key=lambda p: ce.sequence(*p)) == sorted(pairs)
    assert ce.sequence(3, 7) == "00000000000000000003-00000000000000000007"
    with pytest.raises(ValueError):
        ce.sequence(-1, 5)


def test_structured_request():
    note = sample_note("instance.paused")
    request = ce.encode(note, ce.STRUCTURED)
    assert request.headers == {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    body = json.loads(request.body)
    assert body == {**ce.attributes(note), "data": as_json(payloads.to_primitive(note.payload))}
    assert list(body)[:4] == ["specversion", "id", "source", "type"]


def test_binary_request():
    note = sample_note("instance.paused")
    request = ce.encode(note, ce.BINARY)
    attrs = ce.attributes(note)
    assert request.headers == {
        "Content-Type": "application/json",
        **{"ce-" + name: value for name, value in attrs.items() if name != "datacontenttype"},
    }
    assert json.loads(request.body) == as_json(payloads.to_primitive(note.payload))


@pytest.mark.parametrize("value, header", [
    ("compute-01", "compute-01"),
    ("2026-11-25T08:54:51.373456+00:00", "2026-11-25T08:54:51.373456+00:00"),
    ("urn:a/b?c=d&e;f", "urn:a/b?c=d&e;f"),
    ("a b", "a%20b"),
    ('say "hi"', "say%20%22hi%22"),
    ("100%", "100%25"),
    ("nœud-é", "n%C5%93ud-%C3%A9"),
    ("tab\there", "tab%09here"),
])
def test_header_values_are_percent_encoded_only_where_the_binding_requires(value, header):
    assert ce.header_value(value) == header


def test_an_unusual_host_name_survives_binary_mode():
    note = with_payload(sample_note("host.heartbeat"), host="nœud 7 \"x\" 100%")
    request = ce.encode(note, ce.BINARY)
    assert all(v.isascii() and v.isprintable() for v in request.headers.values())
    event = parse(request)
    assert event.get_source() == "urn:libvirt-lifecycle:host:nœud 7 \"x\" 100%"
    assert event.get_subject() == "nœud 7 \"x\" 100%"


UTC = datetime.timezone.utc
MOMENT = datetime.datetime(2026, 11, 25, 8, 54, 51, 373456, tzinfo=UTC)


@pytest.mark.parametrize("occurred_at, time, moment", [
    ("2026-11-25T08:54:51.373456+00:00", "2026-11-25T08:54:51.373456+00:00", MOMENT),
    ("2026-11-25T08:54:51.373456Z", "2026-11-25T08:54:51.373456Z", MOMENT),
    ("2026-11-25T09:54:51.373456+01:00", "2026-11-25T09:54:51.373456+01:00", MOMENT),
    ("2026-11-25T08:54:51.373456789Z", "2026-11-25T08:54:51.373456789Z", MOMENT),
    # ISO 8601 but not RFC 3339: written in UTC as RFC 3339.
    ("2026-11-25 08:54:51.373456", "2026-11-25T08:54:51.373456Z", MOMENT),
    ("2026-11-25T10:54:51.373456+0200", "2026-11-25T08:54:51.373456Z", MOMENT),
    # Not a time at all: no time attribute (optional) rather than one nobody can read.
    ("yesterday", None, None),
])
@pytest.mark.parametrize("mode", ce.MODES)
def test_time_is_rfc3339_or_absent(occurred_at, time, moment, mode):
    note = with_payload(sample_note("instance.crashed"), occurred_at=occurred_at)
    assert ce.attributes(note).get("time") == time
    request = ce.encode(note, mode)
    if time is None:
        # (The SDK would stamp the time it read it: absent means absent from the wire.)
        assert "ce-time" not in request.headers
        assert "time" not in json.loads(request.body)
    else:
        assert parse(request).get_time() == moment


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        ce.encode(sample_note("instance.started"), "batched")
