"""compiled_decode.decode says what wire.decode says, of every body: the same
Notification (the same types of values too), or WireError with the same reason.

Fed with the schema samples, a table of bodies at the edges of the schemas and of JSON,
the bodies of tests/unit/test_admission.py, and, generated, the valid, mutated and
hostile bodies and the boundary sweep of tests/integration/test_hostile_input.py."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from lifecycle_common import wire
from lifecycle_common.wire import compiled_decode, limits, payloads, schemas
from tests.integration import test_hostile_input as hostile
from tests.unit import test_admission

KEY = payloads.OBJECT_KEY


def verdict(decode, body):
    """What ``decode`` makes of ``body``: ("note", its repr) or ("refused", reason)."""
    try:
        note = decode(body)
    except wire.WireError as exc:
        return "refused", str(exc)
    assert isinstance(note, wire.Notification)
    return "note", repr(note)  # repr: 10 and 10.0 are equal, and must not differ


def assert_same_verdict(body) -> None:
    assert verdict(compiled_decode.decode, body) == verdict(wire.decode, body)


def assert_typed_never_differs(body) -> None:
    """The typed path alone: it decides only what wire.decode accepts, identically."""
    typed = compiled_decode.decode_typed(body)
    if typed is not None:
        assert verdict(wire.decode, body) == ("note", repr(typed))


def sample(event_type: str) -> dict:
    return json.loads((schemas.SAMPLE_DIR / f"{event_type}.json").read_text())


def envelope(message, version="2.0") -> bytes:
    inner = message if isinstance(message, str) else json.dumps(message)
    return json.dumps({"oslo.version": version, "oslo.message": inner}).encode()


def with_data(sample_name: str, **changes) -> bytes:
    message = sample(sample_name)
    message["payload"][f"{KEY}.data"].update(changes)
    return envelope(message)


def with_message(sample_name: str, **changes) -> bytes:
    message = sample(sample_name)
    message.update(changes)
    return envelope(message)


def with_payload(sample_name: str, **changes) -> bytes:
    message = sample(sample_name)
    message["payload"].update({f"{KEY}.{k}": v for k, v in changes.items()})
    return envelope(message)


def without(event_type: str, field: str) -> bytes:
    message = sample(event_type)
    del message["payload"][f"{KEY}.data"][field]
    return envelope(message)


SAMPLES = sorted(p.stem for p in schemas.SAMPLE_DIR.glob("*.json"))
STARTED = "instance.started"
INNER = json.dumps(sample(STARTED))

EDGES = {
    # The schemas' bounds.
    "a host with a final newline": with_data(STARTED, host="compute-01\n"),
    "a host with a newline inside": with_data(STARTED, host="compute\n01"),
    "a host beginning with a dot": with_data(STARTED, host=".compute"),
    "an empty host": with_data(STARTED, host=""),
    "a host of 255": with_data(STARTED, host="h" * 255),
    "a host of 256": with_data(STARTED, host="h" * 256),
    "a name with NUL": with_data(STARTED, name="vm\x00"),
    "a name of 255 astral characters": with_data(STARTED, name="🚀" * 255),
    "a name of 256 astral characters": with_data(STARTED, name="🚀" * 256),
    "a uuid in capitals": with_data(STARTED, uuid="3F9C2A1E-7B4D-4E8A-9C61-2D5F0B8E4A17"),
    "a uuid with a final newline": with_data(
        STARTED, uuid="3f9c2a1e-7b4d-4e8a-9c61-2d5f0b8e4a17\n"),
    "an epoch of 2**63 - 1": with_data(STARTED, epoch=2**63 - 1),
    "an epoch of 2**63": with_data(STARTED, epoch=2**63),
    "an epoch of 2**70": with_data(STARTED, epoch=2**70),
    "an epoch of -1": with_data(STARTED, epoch=-1),
    "an epoch of 7.0": with_data(STARTED, epoch=7.0),
    "an epoch of 7.5": with_data(STARTED, epoch=7.5),
    "an epoch of true": with_data(STARTED, epoch=True),
    "a seq of 0": with_data(STARTED, seq=0),
    "an event code of 2**31": with_data(STARTED, libvirt_event_code=2**31),
    "a reason of null": with_data(STARTED, libvirt_reason=None),
    "a reason of 3.0": with_data(STARTED, libvirt_reason=3.0),
    "a state of 65 characters": with_data(STARTED, libvirt_state="S" * 65),
    "a power state unknown": with_data(STARTED, power_state="exploded"),
    "a power state of null": with_data(STARTED, power_state=None),
    "occurred_at without an offset": with_data(STARTED, occurred_at="2026-11-25T08:54:44"),
    "occurred_at at second 60": with_data(STARTED, occurred_at="2026-12-31T23:59:60+00:00"),
    "occurred_at in year 1": with_data(STARTED, occurred_at="0001-01-01T00:00:00+00:00"),
    "occurred_at 9999 behind UTC": with_data(STARTED, occurred_at="9999-12-31T23:59:59-01:00"),
    "occurred_at with nanoseconds": with_data(
        STARTED, occurred_at="2026-11-25T08:54:44.123456789Z"),
    "occurred_at of 41 characters": with_data(
        STARTED, occurred_at="2026-11-25T08:54:44.123456789+00:00      "),
    "occurred_at a number": with_data(STARTED, occurred_at=17),
    "a transition other than the event type's": with_data(STARTED, transition="paused"),
    "a field missing": without(STARTED, "libvirt_state"),
    "an unknown field": with_data(STARTED, colour="blue"),
    "an interval of 10 (an int)": with_data("host.heartbeat", interval=10),
    "an interval of 0": with_data("host.heartbeat", interval=0),
    "an interval of 86400.5": with_data("host.heartbeat", interval=86400.5),
    "an interval of 1e-300": with_data("host.heartbeat", interval=1e-300),
    "an interval of true": with_data("host.heartbeat", interval=True),
    "a status of 1.0's but not 1.1's": with_data("host.heartbeat", status="exploded"),
    "libvirt_connected of 1": with_data("host.heartbeat", libvirt_connected=1),
    "an inventory without new_state": without("host.inventory", "new_state"),
    "an inventory of no instances": with_data("host.inventory", instances=[]),
    "an inventory entry with an unknown field": with_data(
        "host.inventory", instances=[{**sample("host.inventory")["payload"][f"{KEY}.data"]
                                      ["instances"][0], "x": 1}]),
    "an inventory entry not an object": with_data("host.inventory", instances=[7]),
    # The envelope.
    "version 1.0 of the payload": with_payload(STARTED, version="1.0"),
    "version 1.2 with a field of its own": envelope({**sample(STARTED), "payload": {
        **sample(STARTED)["payload"], f"{KEY}.version": "1.2",
        f"{KEY}.data": {**sample(STARTED)["payload"][f"{KEY}.data"], "new": 1}}}),
    "version 2.0 of the payload": with_payload(STARTED, version="2.0"),
    "a version not a string": with_payload(STARTED, version=1.1),
    "another payload's name": with_payload(STARTED, name="HostHeartbeatPayload"),
    "a payload name unknown": with_payload(STARTED, name="Nope"),
    "no namespace": envelope({**sample(STARTED), "payload": {
        k: v for k, v in sample(STARTED)["payload"].items() if not k.endswith("namespace")}}),
    "a heartbeat's event type on an inventory": with_message("host.inventory",
                                                             event_type="host.heartbeat"),
    "an event type unknown": with_message(STARTED, event_type="compute.instance.update"),
    "an event type 'instance.'": with_message(STARTED, event_type="instance."),
    "an event type not a string": with_message(STARTED, event_type=7),
    "a publisher_id not a string": with_message(STARTED, publisher_id=7),
    "a publisher_id of null": with_message(STARTED, publisher_id=None),
    "no publisher_id, timestamp, message_id, priority": envelope({
        k: v for k, v in sample(STARTED).items() if k in ("event_type", "payload")}),
    "a payload not an object": with_message(STARTED, payload=[1]),
    "an envelope of version 2.1": envelope(sample(STARTED), version="2.1"),
    "an envelope without its version": json.dumps({"oslo.message": INNER}).encode(),
    "oslo.message an object": json.dumps({"oslo.version": "2.0",
                                          "oslo.message": sample(STARTED)}).encode(),
    "oslo.message not JSON": envelope("{nope"),
    "oslo.message a list": envelope("[]"),
    "a string body": envelope(sample(STARTED)).decode(),
    "the envelope's keys the other way round": json.dumps(
        {"oslo.message": INNER, "oslo.version": "2.0"}).encode(),
    "an extra key in the envelope": json.dumps(
        {"oslo.version": "2.0", "oslo.message": INNER, "x": [1, {}]}).encode(),
    # JSON itself.
    "not JSON": b"\xff\x00",
    "empty": b"",
    "a byte order mark": b"\xef\xbb\xbf" + envelope(sample(STARTED)),
    "trailing whitespace": envelope(sample(STARTED)) + b" \n",
    "trailing garbage": envelope(sample(STARTED)) + b"x",
    "a trailing NUL": envelope(sample(STARTED)) + b"\x00",
    "a lone surrogate escaped in the host": envelope(INNER.replace('"compute-01"', '"\\ud800"', 1)),
    "a lone surrogate escaped in the envelope": (
        b'{"oslo.version": "2.0", "oslo.message": "\\ud800' + json.dumps(INNER)[1:].encode() + b"}"),
    "a surrogate encoded in UTF-8": envelope(sample(STARTED)).replace(
        b"compute-01", b"\xed\xa0\x80", 1),
    "an overlong UTF-8 encoding": envelope(sample(STARTED)).replace(b"compute-01", b"\xc0\xae", 1),
    "a control character unescaped": envelope(INNER.replace("instance-0000002a", "vm\x01", 1)),
    "escaped key names": envelope(INNER.replace('"host"', '"ho\\u0073t"', 1)),
    "a key twice, the last valid": envelope(INNER.replace('"host": "compute-01"',
                                                          '"host": "-", "host": "compute-01"', 1)),
    "a key twice, the last invalid": envelope(INNER.replace('"host": "compute-01"',
                                                            '"host": "compute-01", "host": "-"', 1)),
    "oslo.message twice": (b'{"oslo.version": "2.0", "oslo.message": "[]", "oslo.message": '
                           + json.dumps(INNER).encode() + b"}"),
    "the payload name twice": envelope(INNER.replace(
        f'"{KEY}.name": "InstanceLifecyclePayload"',
        f'"{KEY}.name": "HostHeartbeatPayload", "{KEY}.name": "InstanceLifecyclePayload"', 1)),
    "a number with a leading zero": envelope(INNER.replace('"seq": 1042', '"seq": 01042', 1)),
    "a number of 1e400": envelope(INNER.replace('"seq": 1042', '"seq": 1e400', 1)),
    "an integer written 1042e0": envelope(INNER.replace('"seq": 1042', '"seq": 1042e0', 1)),
    "nesting 2000 deep": envelope('{"a":' * 2000 + "1" + "}" * 2000),
    "NaN": envelope(INNER.replace('"seq": 1042', '"seq": NaN', 1)),
    "a body just over the limit": b" " * (limits.BODY_BYTES + 1),
    # What msgspec skips unread under a key it does not know, orjson reads and refuses.
    "an unknown key of 1e400 in the envelope": (
        b'{"oslo.version": "2.0", "x": 1e400, "oslo.message": ' + json.dumps(INNER).encode() + b"}"),
    "an unknown key of -1e400 in the message": envelope(INNER.replace(
        '"event_type"', '"x": -1e400, "event_type"', 1)),
    "an unknown key of 1e400 in the payload object": envelope(INNER.replace(
        f'"{KEY}.version"', f'"x": 1e400, "{KEY}.version"', 1)),
    "invalid UTF-8 in an unknown value of the envelope": (
        b'{"oslo.version": "2.0", "x": "\xff\xfe", "oslo.message": '
        + json.dumps(INNER).encode() + b"}"),
    "invalid UTF-8 in an unknown key of the envelope": (
        b'{"oslo.version": "2.0", "\xc3\x28": 1, "oslo.message": '
        + json.dumps(INNER).encode() + b"}"),
    "an overlong sequence in an unknown value of the envelope": (
        b'{"oslo.version": "2.0", "x": "\xc0\xaf", "oslo.message": '
        + json.dumps(INNER).encode() + b"}"),
    "a surrogate in UTF-8 in an unknown value of the envelope": (
        b'{"oslo.version": "2.0", "x": "\xed\xa0\x80", "oslo.message": '
        + json.dumps(INNER).encode() + b"}"),
    "a namespace not a string": envelope(INNER.replace(
        f'"{KEY}.namespace": "lifecycle"', f'"{KEY}.namespace": 5', 1)),
}


def test_every_current_schema_compiles_to_types():
    assert set(compiled_decode._typed_payloads) == {c.NAME for c in payloads.PAYLOAD_CLASSES}


@pytest.mark.parametrize(("pattern", "python"), [
    (r"^[A-Za-z0-9][A-Za-z0-9._-]*$", r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z"),
    (r"^[^\x00]*$", r"^[^\x00]*\Z"),
    (r"^a\$b$", r"^a\$b\Z"),
    (r"^ab", r"^ab"),
])
def test_a_patterns_end_is_the_end_of_the_string(pattern, python):
    assert compiled_decode.python_pattern(pattern) == python


@pytest.mark.parametrize("event_type", SAMPLES)
def test_every_sample_is_read_by_the_typed_path_as_wire_decode_reads_it(event_type):
    body = envelope(sample(event_type))
    typed = compiled_decode.decode_typed(body)
    assert typed is not None, "the typed path refused a sample"
    assert repr(typed) == repr(wire.decode(body))
    assert_same_verdict(body)
    assert_same_verdict(body.decode())


@pytest.mark.parametrize("body", list(EDGES.values()), ids=list(EDGES))
def test_edges_get_the_verdict_of_wire_decode(body):
    assert_typed_never_differs(body)
    assert_same_verdict(body)


def test_the_typed_path_refuses_what_json_schema_refuses_at_the_end_of_a_string():
    """Python's $ would let these through (msgspec's patterns are Python's)."""
    python_dollar = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    assert msgspec.json.decode(b'"compute-01\\n"', type=python_dollar) == "compute-01\n"
    for name in ("a host with a final newline", "a uuid with a final newline"):
        assert compiled_decode.decode_typed(EDGES[name]) is None
        with pytest.raises(wire.WireError, match="must match pattern"):
            compiled_decode.decode(EDGES[name])


def test_top_level_patterns_are_checked_after_decoding_as_msgspec_checks_them():
    """``patterns_checked_after``: the same verdict as a ``msgspec.Meta`` pattern."""
    schema = {"type": "object", "additionalProperties": False,
              "required": ["host", "note"], "properties": {
                  "host": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"},
                  "note": {"type": ["string", "null"], "pattern": r"^[^\x00]*$"}}}
    compiled = compiled_decode.compile_schema(schema, "Moved")
    assert compiled.patterns == (("host", r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z"),
                                 ("note", r"^[^\x00]*\Z"))
    in_meta = msgspec.json.Decoder(compiled_decode._object_type(schema, "InMeta", (), []))
    moved = msgspec.json.Decoder(compiled.type)
    checks = [(field, compiled_decode._pattern_check(p)) for field, p in compiled.patterns]
    for host in ["compute-01", "compute-01\n", ".compute", "", "c" * 300, "é", "a_b"]:
        for note in [None, "", "fine", "nul\x00", "\n"]:
            body = json.dumps({"host": host, "note": note}).encode()
            try:
                in_meta.decode(body)
                expected = True
            except msgspec.ValidationError:
                expected = False
            value = moved.decode(body)
            assert all(check(getattr(value, f)) for f, check in checks) is expected, body
    typed = compiled_decode._typed_payloads["InstanceLifecyclePayload"]
    assert {field for field, _ in typed.data.patterns} == {"uuid", "name", "host"}
    for name in ("a name with NUL", "a uuid in capitals", "a host beginning with a dot"):
        assert compiled_decode.decode_typed(EDGES[name]) is None


@pytest.mark.parametrize("case", list(test_admission.CASES.values()),
                         ids=list(test_admission.CASES))
def test_the_admission_tests_bodies_get_the_verdict_of_wire_decode(case):
    body = case[0]
    assert_typed_never_differs(body)
    assert_same_verdict(body)


SETTINGS = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@SETTINGS
@given(body=hostile.valid_bodies)
def test_schema_valid_bodies_are_read_by_the_typed_path(body):
    typed = compiled_decode.decode_typed(body)
    plain = verdict(wire.decode, body)
    if plain[0] == "note":
        assert typed is not None, plain
        assert repr(typed) == plain[1]
    else:
        assert typed is None


@SETTINGS
@given(body=hostile.hostile_bodies)
def test_hostile_bodies_get_the_verdict_of_wire_decode(body):
    assert_typed_never_differs(body)
    assert_same_verdict(body)


def test_the_boundary_sweep_gets_the_verdict_of_wire_decode():
    serial = 1_000_000
    for case in hostile._boundary_cases():
        serial += 1
        body = hostile._boundary_body(*case, serial)
        assert_typed_never_differs(body)
        assert_same_verdict(body)


@pytest.mark.parametrize("event_type", SAMPLES)
def test_frozen_dataclass_builders_build_what_the_constructors_build(event_type):
    note = wire.decode(envelope(sample(event_type)))
    payload = note.payload
    for cls, instance in [(wire.Notification, note), (type(payload), payload),
                          *((payloads.InventoryEntry, e) for e in getattr(payload, "instances", ()))]:
        values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
        built = payloads.frozen_dataclass_builder(cls)(dict(values))
        plain = cls(**values)
        assert type(built) is cls
        assert built == plain and hash(built) == hash(plain) and repr(built) == repr(plain)
        assert list(vars(built).items()) == list(vars(plain).items())
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.priority = "x"  # still frozen


def test_other_classes_are_built_by_their_constructors():
    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class PostInit:
        a: int

        def __post_init__(self):
            object.__setattr__(self, "a", self.a + 1)

    @dataclasses.dataclass
    class Mutable:
        a: int

    assert payloads.frozen_dataclass_builder(Slotted)({"a": 1}) == Slotted(1)
    assert payloads.frozen_dataclass_builder(PostInit)({"a": 1}).a == 2
    assert payloads.frozen_dataclass_builder(Mutable)({"a": 1}) == Mutable(1)


def timestamp_texts() -> list:
    """Texts at and around the agents' layout: each position of a few real, edge and
    impossible moments changed to every character that could matter."""
    bases = ["2026-12-07T00:10:47.123456+00:00", "1970-01-01T00:00:00.000000+00:00",
             "1969-12-31T23:59:59.999999+00:00", "9999-12-31T23:59:59.999999+00:00",
             "2024-02-29T12:00:00.000001+00:00", "2023-02-29T12:00:00.000001+00:00",
             "2026-12-07T23:59:60.000000+00:00", "2026-13-07T00:10:47.123456+00:00",
             "2026-12-32T00:10:47.123456+00:00", "2026-12-07T24:00:00.000000+00:00",
             "0000-01-01T00:00:00.000000+00:00", "2026-04-31T00:00:00.000000+00:00"]
    characters = "0123456789.:-+TtZz /\x00é٣²"
    texts: list = [None, 17, 1.5, b"2026-12-07T00:10:47.123456+00:00", ""]
    for base in bases:
        texts.append(base)
        for at in range(len(base)):
            for c in characters:
                texts.append(base[:at] + c + base[at + 1:])
        texts += [base[:-1], base + "0", base[:26] + "Z", base[:26] + "-00:00",
                  base[:26] + "+01:00", base[:19] + "+00:00", base[:26] + "0+00:00"]
    return texts


def test_is_wire_timestamp_by_second_is_is_wire_timestamp():
    from lifecycle_common import timeutil
    texts = timestamp_texts()
    for _ in range(2):  # once to remember each second's verdict, once remembered
        for text in texts:
            assert (compiled_decode.is_wire_timestamp_by_second(text)
                    == timeutil.is_wire_timestamp(text)), text


def test_every_format_is_checked_as_the_schemas_check_it():
    assert set(compiled_decode._FORMAT_CHECKS) <= set(schemas.FORMATS)
    for fmt, check in compiled_decode._FORMAT_CHECKS.items():
        for text in timestamp_texts():
            assert check(text) == schemas.FORMATS[fmt](text), (fmt, text)


@pytest.mark.parametrize("value", [
    None, "", "a", "instance-0001", "\x00", "a\x00", "\x00a", "a\x00b", "line\n", "\n",
    "é日🚀", "\x01\x7f", "x" * 300, "x" * 300 + "\x00", "\ud800", "a\\x00"])
def test_every_pattern_check_is_its_regular_expression(value):
    import re
    patterns = {pattern for t in compiled_decode._typed_payloads.values()
                for _, pattern in t.data.patterns}
    assert compiled_decode._NO_NUL in patterns  # the specialised one is in use
    for pattern in patterns:
        expected = value is None or re.search(pattern, value) is not None
        assert compiled_decode._pattern_check(pattern)(value) == expected, (pattern, value)
    assert compiled_decode.no_nul(value) == (
        value is None or re.search(compiled_decode._NO_NUL, value) is not None)


def test_remembered_verdicts_are_the_checks():
    import re
    for pattern in ("^[A-Za-z0-9][A-Za-z0-9._-]*$", "^[^\\x00]*$"):
        pattern = compiled_decode.python_pattern(pattern)
        plain = compiled_decode._pattern_check(pattern)
        remembered = compiled_decode.remembered_verdicts(plain, size=5)
        values = [None, "", "compute-1", "compute-1\n", "-x", "a b", "é", "x\x00", 7,
                  "compute-1", "h" * 300] * 3
        for value in values:  # more values than it remembers: forgotten, checked again
            expected = value is None or (isinstance(value, str)
                                         and re.search(pattern, value) is not None)
            if isinstance(value, str) or value is None:
                assert remembered(value) == plain(value) == expected, (pattern, value)
    hosts = [check for t in compiled_decode._typed_payloads.values()
             for field, check in t.checks if field == "host"]
    assert hosts and all(c.__name__ == "check_remembered" for c in hosts)
