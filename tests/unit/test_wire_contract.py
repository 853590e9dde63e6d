"""The wire contract kept in the repository: payload classes, their JSON Schemas and the
samples of every event type the agent emits must agree, and a payload's fields cannot
change without its version changing (as nova's test_notification.py test_versions)."""

import dataclasses
import hashlib
import json
import types
import typing

import pytest

from lifecycle_common.power_state import PowerState
from lifecycle_common.wire import Notification, decode, encode, payloads, schemas
from lifecycle_publisher import notifications
from lifecycle_publisher.translation import Transition

# Payload name -> (version, fingerprint of its fields). When a payload's fields change,
# bump its VERSION (minor for an added optional field, major otherwise), add the schema
# file of the new version, regenerate the samples, then update this table.
EXPECTED_FINGERPRINTS = {
    "InstanceLifecyclePayload": ("1.1", "c9bc0d8d841e4ebc3dc285561361eff7"),
    "HostInventoryPayload": ("1.1", "6061e7cf86104f82b5577f2ac800a4f3"),
    "HostHeartbeatPayload": ("1.1", "9bdbd2508698b877d30e1404aa4030a7"),
    "InstanceRebootedPayload": ("1.0", "c68c5dc97258c4b894d6d55020869e03"),
    "InstanceWatchdogPayload": ("1.0", "3c774b1e5c58ed971b009ac2435aa533"),
    "InstanceIOErrorPayload": ("1.0", "0b2feacba7316b065d9d403477f4b9ac"),
    "InstanceControlErrorPayload": ("1.0", "c68c5dc97258c4b894d6d55020869e03"),
    "InstanceMemoryFailurePayload": ("1.0", "71bb894f39f41e967874be8dadc6c68e"),
    "InstanceGuestAgentPayload": ("1.0", "0881df21bdfd124b9cf76d2262306f67"),
}

# Every event type the agent can emit, and the payload class it carries.
EMITTED = {
    **{t.event_type: payloads.InstanceLifecyclePayload for t in Transition},
    **{f.event_type: cls for f, cls in payloads.FAULT_PAYLOADS.items()},
    notifications.INVENTORY: payloads.HostInventoryPayload,
    notifications.HEARTBEAT: payloads.HostHeartbeatPayload,
}

SAMPLES = sorted(schemas.SAMPLE_DIR.glob("*.json"))
KEY = payloads.OBJECT_KEY


def field_signature(cls, prefix: str = "") -> list[str]:
    """``name:type`` of every field, nested payload dataclasses included. Types are
    written the same whatever the notation (``Optional[str]``, ``str | None``)."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name):
        lines.append(f"{prefix}{f.name}:{type_name(hints[f.name])}")
        for nested in _dataclasses_in(hints[f.name]):
            lines += field_signature(nested, prefix=f"{prefix}{f.name}.{nested.__name__}.")
    return lines


def type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return "Union[" + ", ".join(sorted(type_name(a) for a in args)) + "]"
    if origin is not None:
        return f"{origin.__name__}[" + ", ".join(type_name(a) for a in args) + "]"
    if hint is Ellipsis:
        return "..."
    if hint is type(None):
        return "None"
    return hint.__name__


def _dataclasses_in(hint) -> list[type]:
    if dataclasses.is_dataclass(hint):
        return [hint]
    return [cls for arg in typing.get_args(hint) for cls in _dataclasses_in(arg)]


def fingerprint(cls) -> str:
    return hashlib.sha256("\n".join(field_signature(cls)).encode()).hexdigest()[:32]


def load_sample(path) -> dict:
    return json.loads(path.read_text())


def envelope(message: dict) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


# -- versions pinned ----------------------------------------------------------------

def test_payload_versions_are_pinned():
    actual = {cls.NAME: (cls.VERSION, fingerprint(cls)) for cls in payloads.PAYLOAD_CLASSES}
    changed = {name: (EXPECTED_FINGERPRINTS.get(name), now)
               for name, now in actual.items() if EXPECTED_FINGERPRINTS.get(name) != now}
    assert not changed, (
        "payload fields changed: bump the payload's VERSION (minor for an added optional "
        "field, major for anything else), add its schema in lifecycle_common/wire/schemas/, "
        "regenerate the samples, then update EXPECTED_FINGERPRINTS. "
        f"(expected, actual): {changed}")


def test_fingerprint_sees_nested_fields_and_annotations():
    @dataclasses.dataclass(frozen=True)
    class Entry:
        uuid: str

    @dataclasses.dataclass(frozen=True)
    class Wider:
        uuid: str
        extra: int

    @dataclasses.dataclass(frozen=True)
    class Retyped:
        uuid: int

    @dataclasses.dataclass(frozen=True)
    class A:
        items: tuple[Entry, ...]

    @dataclasses.dataclass(frozen=True)
    class B:
        items: tuple[Wider, ...]

    @dataclasses.dataclass(frozen=True)
    class C:
        items: tuple[Retyped, ...]

    @dataclasses.dataclass(frozen=True)
    class D:
        items: typing.Tuple[Entry, ...]
        note: typing.Optional[str]

    @dataclasses.dataclass(frozen=True)
    class E:
        note: str | None
        items: tuple[Entry, ...]

    assert len({fingerprint(A), fingerprint(B), fingerprint(C)}) == 3
    assert fingerprint(D) == fingerprint(E)  # notation and field order do not matter
    assert "instances.InventoryEntry.power_state:str" in field_signature(
        payloads.HostInventoryPayload)


# -- schemas ------------------------------------------------------------------------

@pytest.mark.parametrize("cls", payloads.PAYLOAD_CLASSES, ids=lambda c: c.NAME)
def test_current_version_has_a_schema(cls):
    assert (schemas.SCHEMA_DIR / f"{cls.NAME}.{cls.VERSION}.json").is_file()
    assert schemas.known_versions()[cls.NAME][-1] == cls.VERSION


def test_every_schema_file_is_a_known_payload_and_a_valid_schema():
    for path in schemas.SCHEMA_DIR.glob("*.json"):
        name, _, version = path.stem.partition(".")
        assert name in payloads.BY_NAME, path.name
        schemas.validator(name, version)  # raises SchemaError if the schema is invalid
        assert json.loads(path.read_text())["title"] == name


def _current_schema(cls) -> dict:
    return json.loads((schemas.SCHEMA_DIR / f"{cls.NAME}.{cls.VERSION}.json").read_text())


@pytest.mark.parametrize("cls", payloads.PAYLOAD_CLASSES, ids=lambda c: c.NAME)
def test_schema_properties_and_required_are_the_dataclass_fields(cls):
    schema = _current_schema(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(schema["properties"]) == names
    assert set(schema["required"]) == names
    assert schema["additionalProperties"] is False


def test_inventory_entry_schema_is_the_dataclass_fields():
    items = _current_schema(payloads.HostInventoryPayload)["properties"]["instances"]["items"]
    names = {f.name for f in dataclasses.fields(payloads.InventoryEntry)}
    assert set(items["properties"]) == names
    assert set(items["required"]) == names


def test_schema_enums_are_the_code_vocabularies():
    instance = _current_schema(payloads.InstanceLifecyclePayload)["properties"]
    assert set(instance["transition"]["enum"]) == {t.value for t in Transition}
    assert set(instance["power_state"]["enum"]) == {p.value for p in PowerState} | {None}
    inventory = _current_schema(payloads.HostInventoryPayload)["properties"]
    assert set(inventory["instances"]["items"]["properties"]["power_state"]["enum"]) == {
        p.value for p in PowerState}


def test_older_schemas_have_fewer_fields_not_other_ones():
    for name, versions in schemas.known_versions().items():
        cls = payloads.BY_NAME[name]
        current = {f.name for f in dataclasses.fields(cls)}
        for version in versions:
            properties = json.loads(
                (schemas.SCHEMA_DIR / f"{name}.{version}.json").read_text())["properties"]
            assert set(properties) <= current, f"{name} {version}"


# -- samples ------------------------------------------------------------------------

def test_every_emitted_event_type_has_a_sample_and_nothing_else_does():
    assert {p.stem for p in SAMPLES} == set(EMITTED)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_is_an_oslo_message_of_its_event_type(path):
    sample = load_sample(path)
    assert set(sample) == {"message_id", "publisher_id", "event_type", "priority",
                           "payload", "timestamp"}
    assert sample["event_type"] == path.stem
    assert sample["priority"] == "INFO"
    assert sample["publisher_id"] == notifications.publisher_id(
        sample["payload"][f"{KEY}.data"]["host"])
    cls = EMITTED[path.stem]
    assert sample["payload"][f"{KEY}.name"] == cls.NAME
    assert sample["payload"][f"{KEY}.namespace"] == payloads.NAMESPACE
    assert sample["payload"][f"{KEY}.version"] == cls.VERSION
    if cls is payloads.InstanceLifecyclePayload:
        assert "instance." + sample["payload"][f"{KEY}.data"]["transition"] == path.stem


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_validates_against_its_schema(path):
    payload = load_sample(path)["payload"]
    validator = schemas.validator(payload[f"{KEY}.name"], payload[f"{KEY}.version"])
    errors = [e.message for e in validator.iter_errors(payload[f"{KEY}.data"])]
    assert errors == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_decodes_to_its_payload_class(path):
    sample = load_sample(path)
    note = decode(envelope(sample))
    assert isinstance(note.payload, EMITTED[path.stem])
    assert note.event_type == sample["event_type"]
    assert (note.message_id, note.publisher_id, note.timestamp, note.priority) == (
        sample["message_id"], sample["publisher_id"], sample["timestamp"], sample["priority"])
    if isinstance(note.payload, payloads.HostInventoryPayload):
        assert note.payload.instances
        assert all(isinstance(e, payloads.InventoryEntry) for e in note.payload.instances)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.stem)
def test_sample_round_trips_through_encode_and_decode(path):
    sample = load_sample(path)
    note = decode(envelope(sample))
    assert isinstance(note, Notification)
    assert json.loads(json.dumps(note.to_message())) == sample  # tuples are JSON arrays
    assert decode(encode(note)) == note
    outer = json.loads(encode(note))
    assert outer["oslo.version"] == "2.0"
    assert json.loads(outer["oslo.message"]) == sample
