"""Notifications as CloudEvents 1.0 HTTP requests (structured or binary content mode).

Pure: a ``Notification`` in, the headers and body of one POST out. The event's ``id``
is the same for every redelivery and retry of one event, so a subscriber can drop
duplicates (delivery is at least once); ``sequence`` orders a host's events as strings.
Written with orjson, without the cloudevents SDK (a test checks the SDK reads
every request this module writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

import orjson

from lifecycle_common import timeutil
from lifecycle_common.wire import payloads, vocabulary

TYPE_PREFIX = "io.libvirt-lifecycle."          # type = TYPE_PREFIX + event_type
SOURCE_PREFIX = "urn:libvirt-lifecycle:host:"   # source = SOURCE_PREFIX + host
SCHEMA_PREFIX = "urn:libvirt-lifecycle:schema:"  # dataschema = prefix + NAME:VERSION
STRUCTURED = "structured"
BINARY = "binary"
MODES = (STRUCTURED, BINARY)

SPECVERSION = "1.0"
DATA_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
HEADER_PREFIX = "ce-"

# RFC 3339's date-time, as the CloudEvents JSON format and HTTP binding require of time.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})",
    re.ASCII)
# The HTTP binding (3.1.3.2): printable ASCII but space, '"' and '%' goes as it is; the
# rest is percent-encoded UTF-8.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_HEADER_PLAIN = re.compile(r'[!#-$&-~]*', re.ASCII)  # 0x21-0x7E without '"' (0x22), '%' (0x25)


@dataclass(frozen=True)
class Request:
    """One HTTP request body and its headers, ready to POST."""

    headers: dict[str, str]
    body: bytes


def event_id(note) -> str:
    """The CloudEvent ``id``: the same for one event whatever its redeliveries and
    retries. ``host:epoch:seq`` where the payload has both (every instance event, the
    inventory): an agent numbers its events and never reuses a number in an epoch.
    The envelope's message id otherwise (a heartbeat carries ``last_seq``, not a number
    of its own), which stays the same across redeliveries of that message."""
    data = vars(note.payload)
    if "seq" in data and "epoch" in data:
        return f"{data['host']}:{data['epoch']}:{data['seq']}"
    return note.message_id


def sequence(epoch: int, seq: int) -> str:
    """The ``sequence`` extension: ordered as strings as ``(epoch, seq)`` is as numbers,
    for numbers below 10**20 (both must be >= 0)."""
    if epoch < 0 or seq < 0:
        raise ValueError(f"sequence of a negative number: epoch {epoch}, seq {seq}")
    return f"{epoch:020d}-{seq:020d}"


def partition_key(note) -> str:
    """What orders delivery: the instance's uuid, or the host for an event of the host
    itself (no uuid)."""
    payload = note.payload
    uuid = vars(payload).get("uuid")
    return uuid if uuid is not None else payload.host


def attributes(note) -> dict:
    """The event's context attributes, in the order they are written: specversion, id,
    source, type, subject, time (when the payload's ``occurred_at`` can be written as
    RFC 3339), datacontenttype, dataschema, sequence (when the payload numbers the
    event), partitionkey."""
    payload = note.payload
    data = vars(payload)
    key = partition_key(note)
    attrs = {
        "specversion": SPECVERSION,
        "id": event_id(note),
        "source": SOURCE_PREFIX + payload.host,
        "type": TYPE_PREFIX + note.event_type,
        "subject": payload.host if note.event_type.startswith(vocabulary.HOST_PREFIX) else key,
    }
    time = rfc3339(data.get("occurred_at"))
    if time is not None:
        attrs["time"] = time
    attrs["datacontenttype"] = DATA_CONTENT_TYPE
    attrs["dataschema"] = f"{SCHEMA_PREFIX}{payload.NAME}:{payload.VERSION}"
    if "seq" in data and "epoch" in data:
        attrs["sequence"] = sequence(data["epoch"], data["seq"])
    attrs["partitionkey"] = key
    return attrs


def rfc3339(text) -> str | None:
    """``text`` itself if it is written as an RFC 3339 date-time (as the wire's
    timestamps are: decoding checked the moment is real), else the moment it names in
    ISO 8601 written as RFC 3339 in UTC, else None (an event without ``time`` is valid;
    one with a time the subscriber cannot read is not)."""
    if not isinstance(text, str):
        return None
    if _RFC3339.fullmatch(text):
        return text
    try:
        return timeutil.isoformat(timeutil.parse(text)).replace("+00:00", "Z")
    except (ValueError, OverflowError):
        return None


def encode(note, mode: str = STRUCTURED) -> Request:
    """The HTTP request carrying ``note`` as a CloudEvent whose data is the versioned
    payload (``payloads.to_primitive``). Structured: the whole event as JSON in the
    body. Binary: each attribute in a ``ce-`` header (``datacontenttype`` as
    Content-Type), the data alone as the body."""
    attrs = attributes(note)
    data = payloads.to_primitive(note.payload)
    if mode == STRUCTURED:
        attrs["data"] = data
        return Request({"Content-Type": STRUCTURED_CONTENT_TYPE}, orjson.dumps(attrs))
    if mode == BINARY:
        headers = {"Content-Type": attrs.pop("datacontenttype")}
        for name, value in attrs.items():
            headers[HEADER_PREFIX + name] = header_value(value)
        return Request(headers, orjson.dumps(data))
    raise ValueError(f"unknown CloudEvents content mode {mode!r}: one of {MODES}")


def header_value(value: str) -> str:
    """An attribute's value as a binary-mode header carries it: as it is when it is
    printable ASCII without space, '"' or '%' (nearly always), else percent-encoded
    UTF-8 (HTTP binding 3.1.3.2)."""
    if _HEADER_PLAIN.fullmatch(value):
        return value
    return quote(value, safe=_HEADER_SAFE)
