"""``wire.decode``, reached through msgspec types compiled from the JSON Schemas.

``decode`` says what ``wire.decode`` says of every body: the same ``Notification``, or
``WireError`` with the same reason. It first reads the body with msgspec into typed
structs built at import from the published schemas of the current payload versions
(``_typed_payloads``); whatever those refuse, or cannot express (an older or newer
version, ``7.0`` for an integer, a non-string ``publisher_id``, a foreign
notification...), is read again by ``wire.decode``, which gives the verdict and its
reason. So the typed path only ever accepts; it never refuses on its own, and it must
never accept what ``wire.decode`` refuses (tests/unit/test_compiled_decode.py checks
both on the schema samples, their mutations and the hostile bodies of the tests).

Measured on this project's machines (benchmarks/micro_consumer.py, an 859-byte
lifecycle event): ``wire.decode`` about 35 microseconds a message (orjson twice, then
fastjsonschema over the payload's dict, then the dataclasses); ``decode`` about 10
(msgspec straight into typed structs, the date-time format checked by the schemas' own
check, the frozen dataclasses built by ``payloads.frozen_dataclass_builder``).

How the schemas become types (only what the payload schemas use; anything else makes
``compile_schema`` raise, and a test compiles every current schema):
- ``type`` string, integer, number, boolean, null, object, array, and lists of them;
- ``enum`` as a ``Literal`` (``null`` in it as ``None``);
- ``minLength``/``maxLength``/``pattern``, ``minimum``/``maximum``/``exclusiveMinimum``,
  ``maxItems``, as ``msgspec.Meta`` constraints; but the ``pattern`` of a top-level field
  is checked after decoding (``patterns_checked_after``: cheaper there);
- ``additionalProperties: false`` as ``forbid_unknown_fields``; ``required`` as fields
  without a default;
- ``format`` is checked after decoding, by ``schemas.FORMATS`` (as the validators do).

A pattern's ``$`` is JSON Schema's (ECMA 262): the end of the string. Python's ``$``
also matches before a final newline, so ``"compute-1\\n"`` would pass as a host: each
unescaped ``$`` becomes ``\\Z``, exactly as fastjsonschema (the check that decides in
``wire.decode``) rewrites it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any, Callable, Literal, Optional, Union

import msgspec

from lifecycle_common import timeutil
from lifecycle_common.wire import envelope, limits, payloads, schemas, vocabulary
from lifecycle_common.wire.envelope import Notification

# Keywords that only document a schema.
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description"})
_DOLLAR = re.compile(r"(?<!\\)\$")  # an unescaped $, as fastjsonschema finds it


class UnsupportedSchema(ValueError):
    """A schema uses a keyword this compiler does not translate."""


def python_pattern(pattern: str) -> str:
    """The Python regular expression (used with ``search``) that matches what the JSON
    Schema ``pattern`` matches: every unescaped ``$`` means the end of the string."""
    return _DOLLAR.sub(r"\\Z", pattern)


@dataclasses.dataclass(frozen=True)
class CompiledSchema:
    """A schema as a msgspec type, and the string fields of the top-level object checked
    after decoding: those whose ``format`` is checked (``(field, format)`` pairs) and
    those whose ``pattern`` is (``(field, Python pattern)``, see ``patterns_checked_after``)."""
    type: Any
    formats: tuple[tuple[str, str], ...]
    patterns: tuple[tuple[str, str], ...] = ()


def compile_schema(schema: dict, name: str, field_order: tuple[str, ...] = ()) -> CompiledSchema:
    """The msgspec type of an object ``schema`` whose properties are all required; its
    fields in ``field_order`` (those it names), the rest in the schema's order. Raises
    UnsupportedSchema."""
    formats: list[tuple[str, str]] = []
    patterns: list[tuple[str, str]] = []
    return CompiledSchema(_object_type(schema, name, field_order, formats, patterns),
                          tuple(formats), tuple(patterns))


def patterns_checked_after(schema: dict, field: str, patterns: Optional[list]) -> dict:
    """``schema`` of a top-level ``field`` without its ``pattern``, the pattern noted in
    ``patterns`` to be checked once the body is decoded (a refusal then makes
    ``decode_typed`` give the body to ``wire.decode``, as msgspec's own refusal does);
    ``schema`` itself where ``patterns`` is None (an array's items) or it has no
    pattern. Why: msgspec checks a ``Meta(pattern=...)`` by calling Python's ``re`` from
    C, about 0.7 us a string, where the compiled pattern's ``search`` called here takes
    0.3 to 0.4: InstanceLifecyclePayload's uuid, name and host, about 1 us a message
    (benchmarks/micro_consumer.py, admit: 11.9 us against 10.9; tests/unit/
    test_compiled_decode.py holds the verdicts to wire.decode's)."""
    kinds = schema.get("type")
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if patterns is None or "pattern" not in schema or kinds - {"null"} != {"string"}:
        return schema
    patterns.append((field, python_pattern(schema["pattern"])))
    return {key: value for key, value in schema.items() if key != "pattern"}


def _pattern_check(pattern: str) -> Callable[[object], bool]:
    """Whether a decoded value (a str, or None where the schema allows null) matches
    ``pattern`` (a Python pattern, used with ``search``); ``no_nul`` for the schemas'
    "no NUL character" pattern."""
    if pattern == _NO_NUL:
        return no_nul
    search = re.compile(pattern).search
    return lambda value: value is None or search(value) is not None


_NO_NUL = python_pattern(r"^[^\x00]*$")  # the schemas' pattern of a free-text name


def no_nul(value: object) -> bool:
    r"""Whether ``value`` (a str, or None) matches ``^[^\x00]*$`` (``_NO_NUL``): holds
    no NUL character. ``"\x00" not in value``: 0.06 us where the regular expression's
    ``search`` takes 0.33, once a message (an instance's name); tests/unit/
    test_compiled_decode.py holds it to the regular expression."""
    return value is None or "\x00" not in value


def _object_type(schema: dict, name: str, field_order, formats: list,
                 patterns: Optional[list] = None) -> type:
    _only(schema, {"type", "properties", "required", "additionalProperties"}, name)
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise UnsupportedSchema(f"{name}: not an object with properties")
    properties = schema["properties"]
    if set(schema.get("required", ())) != set(properties):
        raise UnsupportedSchema(f"{name}: a property is not required, or not described")
    additional = schema.get("additionalProperties", True)
    if not isinstance(additional, bool):
        raise UnsupportedSchema(f"{name}: additionalProperties other than a boolean")
    order = [f for f in field_order if f in properties]
    order += [f for f in properties if f not in order]
    fields = []
    for field in order:
        sub = properties[field]
        if "format" in sub:
            if sub["format"] not in schemas.FORMATS:
                raise UnsupportedSchema(f"{name}.{field}: format {sub['format']!r}")
            formats.append((field, sub["format"]))
        sub = patterns_checked_after(sub, field, patterns)
        fields.append((field, _value_type(sub, f"{name}.{field}")))
    # gc=False: the decoded structs hold strings, numbers and lists of such structs,
    # never a cycle; the garbage collector need not track them.
    return msgspec.defstruct(name, fields, forbid_unknown_fields=not additional, gc=False)


def _value_type(schema: dict, name: str) -> Any:
    if "enum" in schema:
        _only(schema, {"enum"}, name)
        values = schema["enum"]
        strings = tuple(v for v in values if v is not None)
        if not strings or not all(isinstance(v, str) for v in strings):
            raise UnsupportedSchema(f"{name}: an enum of other than strings (and null)")
        return Optional[Literal[strings]] if None in values else Literal[strings]
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    nullable = "null" in kinds
    kinds = [k for k in kinds if k != "null"]
    if len(kinds) != 1:
        raise UnsupportedSchema(f"{name}: type {schema.get('type')!r}")
    kind = kinds[0]
    if kind == "string":
        _only(schema, {"type", "minLength", "maxLength", "pattern", "format"}, name)
        meta = {key: schema[word] for word, key in (("minLength", "min_length"),
                                                    ("maxLength", "max_length"))
                if word in schema}
        if "pattern" in schema:
            meta["pattern"] = python_pattern(schema["pattern"])
        value = Annotated[str, msgspec.Meta(**meta)] if meta else str
    elif kind in ("integer", "number"):
        _only(schema, {"type", "minimum", "maximum", "exclusiveMinimum"}, name)
        meta = msgspec.Meta(**{key: schema[word] for word, key in (
            ("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt")) if word in schema})
        # JSON Schema's integer also admits 7.0: msgspec refuses it (wire.decode reads
        # it). A number stays the int or the float it was written as.
        value = (Annotated[int, meta] if kind == "integer"
                 else Union[Annotated[int, meta], Annotated[float, meta]])
    elif kind == "boolean":
        _only(schema, {"type"}, name)
        value = bool
    elif kind == "array":
        _only(schema, {"type", "items", "maxItems"}, name)
        items = schema.get("items")
        if not isinstance(items, dict) or items.get("type") != "object":
            raise UnsupportedSchema(f"{name}: an array of other than objects")
        nested_formats: list = []
        item = _object_type(items, f"{name}Item", (), nested_formats)
        if nested_formats:
            raise UnsupportedSchema(f"{name}: a format inside an array")
        value = (Annotated[list[item], msgspec.Meta(max_length=schema["maxItems"])]
                 if "maxItems" in schema else list[item])
    else:
        raise UnsupportedSchema(f"{name}: type {kind!r}")
    return Optional[value] if nullable else value


def _only(schema: dict, allowed: set, name: str) -> None:
    unknown = set(schema) - allowed - _ANNOTATIONS
    if unknown:
        raise UnsupportedSchema(f"{name}: keywords {sorted(unknown)}")


# -- the date-time format, checked once per second --------------------------------------

_SECONDS_REMEMBERED = 4096
_seconds_checked: dict[str, bool] = {}  # "YYYY-MM-DDTHH:MM:SS" -> its verdict


def is_wire_timestamp_by_second(text: object) -> bool:
    """``timeutil.is_wire_timestamp(text)`` (the schemas' ``date-time``), its verdict on
    the date and time to the second remembered where ``text`` has the agents' layout,
    ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``: the microseconds (six ASCII digits) decide
    nothing then (the range ends on a whole second, 1970-01-01T00:00:00, or on its
    last microsecond, 9999-12-31T23:59:59.999999), so the verdict is that of the
    second, ``YYYY-MM-DDTHH:MM:SS+00:00``, remembered (a batch's events share their
    seconds). Anything else is checked by ``is_wire_timestamp`` itself. 0.62 us a
    message against 1.21 (benchmarks/micro_consumer.py, "of which"; admit 10.25 against
    10.75); tests/unit/test_compiled_decode.py holds it to ``is_wire_timestamp`` on a
    sweep of texts."""
    if (type(text) is str and len(text) == 32 and text[19] == "."
            and text[26:] == "+00:00"):
        fraction = text[20:26]
        if fraction.isdigit() and fraction.isascii():
            second = text[:19]
            verdict = _seconds_checked.get(second)
            if verdict is None:
                if len(_seconds_checked) >= _SECONDS_REMEMBERED:
                    _seconds_checked.clear()
                verdict = _seconds_checked[second] = timeutil.is_wire_timestamp(
                    second + "+00:00")
            return verdict
    return timeutil.is_wire_timestamp(text)


# The checks of the formats, as schemas.FORMATS says them (a test holds each to it).
_FORMAT_CHECKS: dict[str, Callable[[object], bool]] = {
    "date-time": is_wire_timestamp_by_second}


# -- verdicts remembered for the values that repeat -----------------------------------------

# Top-level fields whose values are few and repeat message after message: a payload's
# host (every message of a host names it).
_FIELDS_REPEATED = frozenset({"host"})
_VERDICTS_REMEMBERED = 4096


def remembered_verdicts(check: Callable[[object], bool],
                        size: int = _VERDICTS_REMEMBERED) -> Callable[[object], bool]:
    """``check``, its verdict on each str remembered (up to ``size`` of them, then
    forgotten all at once): a host's pattern checked in 0.13 us against 0.38 for the
    regular expression, once a message. A verdict is a pure function of the string;
    anything else than a str is checked each time (tests/unit/test_compiled_decode.py
    holds it to ``check``)."""
    verdicts: dict[str, bool] = {}

    def check_remembered(value: object) -> bool:
        if type(value) is not str:
            return check(value)
        verdict = verdicts.get(value)
        if verdict is None:
            if len(verdicts) >= size:
                verdicts.clear()
            verdict = verdicts[value] = check(value)
        return verdict
    return check_remembered


# -- building the frozen dataclasses --------------------------------------------------------

_build_notification = payloads.frozen_dataclass_builder(Notification)


# -- the typed messages ------------------------------------------------------------------

_KEY = payloads.OBJECT_KEY
_INSTANCE = vocabulary.INSTANCE_PREFIX  # a lifecycle event's type: this, then its transition


@dataclasses.dataclass(frozen=True)
class _TypedPayload:
    cls: type
    data: CompiledSchema
    payload_type: type  # the payload object around the data, tagged with cls.NAME
    build: Callable[[dict], Any]  # the payload from its data's fields
    # (field, the check of its format or of its pattern)
    checks: tuple[tuple[str, Callable[[object], bool]], ...]


def _typed_payload(cls) -> _TypedPayload:
    """The msgspec types of ``cls`` at its current VERSION, from that version's schema."""
    schema = json.loads((schemas.SCHEMA_DIR / f"{cls.NAME}.{cls.VERSION}.json").read_text())
    names = tuple(f.name for f in dataclasses.fields(cls))
    if set(schema.get("properties", ())) != set(names):
        raise UnsupportedSchema(f"{cls.NAME} {cls.VERSION}: the schema's properties are "
                                f"not the dataclass's fields")
    data = compile_schema(schema, f"{cls.NAME}Data", names)
    payload_type = msgspec.defstruct(
        f"{cls.NAME}Object",
        [("version", Literal[cls.VERSION], msgspec.field(name=f"{_KEY}.version")),
         ("data", data.type, msgspec.field(name=f"{_KEY}.data")),
         ("namespace", str, msgspec.field(default="", name=f"{_KEY}.namespace"))],
        tag_field=f"{_KEY}.name", tag=cls.NAME, forbid_unknown_fields=True)
    checks = tuple((field, _FORMAT_CHECKS.get(fmt, schemas.FORMATS[fmt]))
                   for field, fmt in data.formats)
    checks += tuple((field, remembered_verdicts(_pattern_check(pattern))
                     if field in _FIELDS_REPEATED else _pattern_check(pattern))
                    for field, pattern in data.patterns)
    return _TypedPayload(cls, data, payload_type, payloads.frozen_dataclass_builder(cls),
                         checks)


def _typed_payloads_or_none() -> dict[str, _TypedPayload]:
    """The payloads whose current schema compiles (all of them, a test says; one that
    does not is simply always read by wire.decode)."""
    typed = {}
    for cls in payloads.PAYLOAD_CLASSES:
        try:
            typed[cls.NAME] = _typed_payload(cls)
        except UnsupportedSchema:
            pass
    return typed


_typed_payloads = _typed_payloads_or_none()


class _Message(msgspec.Struct, forbid_unknown_fields=True):
    """The oslo message of one of our notifications. A key it does not name is left to
    ``wire.decode`` (as in the envelope and the payload object): msgspec skips an
    unknown key's value without checking it, where orjson refuses the whole body for a
    number out of a double's range or bytes that are not UTF-8 anywhere in it; our
    agents send no other keys."""
    event_type: str
    payload: Union[tuple(t.payload_type  # type: ignore[valid-type]
                         for t in _typed_payloads.values())]
    publisher_id: str = ""
    timestamp: str = ""
    message_id: str = ""
    priority: str = envelope.PRIORITY


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    version: Literal[envelope.ENVELOPE_VERSION] = msgspec.field(name="oslo.version")
    message: str = msgspec.field(name="oslo.message")


_read_envelope = msgspec.json.Decoder(_Envelope).decode
_read_message = msgspec.json.Decoder(_Message).decode
_by_payload_type = {t.payload_type: t for t in _typed_payloads.values()}
_build_entry = payloads.frozen_dataclass_builder(payloads.InventoryEntry)
_asdict = msgspec.structs.asdict


def decode(body: bytes | str) -> Notification:
    """``wire.decode(body)``, about three times faster for our own notifications of the
    current versions: the same Notification, or WireError with the same reason.
    Whatever the body holds, nothing else is raised (nothing else than wire.decode
    raises)."""
    note = decode_typed(body)
    return note if note is not None else envelope.decode(body)


def decode_typed(body: bytes | str) -> Optional[Notification]:
    """The Notification, read through the compiled types; None where they refuse the
    body or cannot decide (``wire.decode`` decides then). Never raises."""
    if len(body) > limits.BODY_BYTES:
        return None
    try:
        message = _read_message(_read_envelope(body).message)
        typed = _by_payload_type[type(message.payload)]
        cls = typed.cls
        event_type = message.event_type
        if payloads.payload_class_for(event_type) is not cls:
            return None
        data = message.payload.data
        for field, check in typed.checks:
            if not check(getattr(data, field)):
                return None
        if cls is payloads.InstanceLifecyclePayload and event_type != _INSTANCE + data.transition:
            return None
        values = _asdict(data)  # the dataclass's fields, in its order (_typed_payload)
        if cls is payloads.HostInventoryPayload:
            values["instances"] = tuple(_build_entry(_asdict(e)) for e in data.instances)
        return _build_notification({
            "event_type": event_type, "payload": typed.build(values),
            "publisher_id": message.publisher_id, "timestamp": message.timestamp,
            "message_id": message.message_id, "priority": message.priority})
    except Exception:  # noqa: BLE001 - refused or undecidable here: wire.decode decides
        return None
