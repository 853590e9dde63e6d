"""What a dead letter says of itself, read from its headers and its body. Pure: no I/O,
and nothing here raises on what a message holds.

A dead letter is the consumer's copy of a message it refused (``consumer/amqp_queue.py``
writes the headers), or a message RabbitMQ dead-lettered itself (``x-death``). Bodies
are hostile: any bytes, any JSON; the event type and host are read from the body when
it is a notification, and are None otherwise. Dead letters written before the headers
of the dead-letter id, cause, moment and user existed have None there.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
from typing import Any, Optional

import orjson

from consumer.amqp_queue import (
    CAUSE_HEADER, DEAD_LETTER_ID_HEADER, DEAD_LETTERED_AT_HEADER, ORIGINAL_USER_HEADER,
    REASON_HEADER)
from consumer.cli import tables
from lifecycle_common import timeutil
from lifecycle_common.wire import envelope, payloads

ORIGINAL_EXCHANGE_HEADER = "x-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"
REPLAYED_FROM_HEADER = "x-lifecycle-replayed-from"  # the dead letter a message replays
# Headers that describe the dead-lettering, not the message: not replayed.
DEAD_LETTER_HEADERS = frozenset({
    REASON_HEADER, CAUSE_HEADER, DEAD_LETTERED_AT_HEADER, DEAD_LETTER_ID_HEADER,
    ORIGINAL_USER_HEADER, ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER,
    REPLAYED_FROM_HEADER, "x-death", "x-first-death-exchange", "x-first-death-queue",
    "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
    "x-last-death-reason", "x-delivery-count"})
HEX_LIMIT = 4096     # bytes of a binary body that ``show`` prints
TEXT_LIMIT = 65536   # characters of a text body that ``show`` prints


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    id: str                       # the dead-letter id, else the message id, else ''
    dead_letter_id: Optional[str]
    message_id: Optional[str]
    event_type: Optional[str]
    host: Optional[str]
    reason: Optional[str]
    cause: Optional[str]
    dead_lettered_at: Optional[str]
    original_user_id: Optional[str]
    original_exchange: Optional[str]
    original_routing_key: Optional[str]
    size: int
    body: bytes
    headers: dict
    content_type: Optional[str]
    content_encoding: Optional[str]

    def summary(self) -> dict:
        """The fields ``dlq list`` prints, JSON-ready."""
        return {"id": self.id, "message_id": self.message_id, "event_type": self.event_type,
                "host": self.host, "reason": self.reason, "cause": self.cause,
                "dead_lettered_at": self.dead_lettered_at,
                "original_user_id": self.original_user_id,
                "original_exchange": self.original_exchange,
                "original_routing_key": self.original_routing_key, "size": self.size}

    def detail(self) -> dict:
        """Everything ``dlq show`` prints: the summary, the headers, and the body
        (``describe_body``)."""
        return {**self.summary(), "content_type": self.content_type,
                "content_encoding": self.content_encoding,
                "headers": jsonable(self.headers), **describe_body(self.body)}


def read(body: bytes | str, properties: dict) -> DeadLetter:
    """A dead letter from an AMQP message's body and properties (py-amqp's dict)."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")
    headers = properties.get("application_headers")
    headers = headers if isinstance(headers, dict) else {}
    death = _first_death(headers)
    message_id = _text(properties.get("message_id"))
    dead_letter_id = _text(headers.get(DEAD_LETTER_ID_HEADER))
    event_type, host = notification_fields(body)
    reason = _text(headers.get(REASON_HEADER))
    if reason is None and death.get("reason"):
        reason = f"dead-lettered by the broker: {death['reason']}"
    return DeadLetter(
        id=dead_letter_id or message_id or "", dead_letter_id=dead_letter_id,
        message_id=message_id, event_type=event_type, host=host, reason=reason,
        cause=_text(headers.get(CAUSE_HEADER)),
        dead_lettered_at=_text(headers.get(DEAD_LETTERED_AT_HEADER)) or death.get("time"),
        original_user_id=(_text(headers.get(ORIGINAL_USER_HEADER))
                          or _text(properties.get("user_id"))),
        original_exchange=_text(headers.get(ORIGINAL_EXCHANGE_HEADER)) or death.get("exchange"),
        original_routing_key=(_text(headers.get(ORIGINAL_ROUTING_KEY_HEADER))
                              or death.get("routing_key")),
        size=len(body), body=body, headers=dict(headers),
        content_type=_text(properties.get("content_type")),
        content_encoding=_text(properties.get("content_encoding")))


def notification_fields(body: bytes) -> tuple[Optional[str], Optional[str]]:
    """(event_type, host) of a body that is a notification envelope, each None where
    the body does not say (or says it in a type other than a string)."""
    try:
        message = envelope.unwrap(body)
    except Exception:  # noqa: BLE001 - a hostile body: nothing to read
        return None, None
    event_type = message.get("event_type")
    payload = message.get("payload")
    data = payload.get(f"{payloads.OBJECT_KEY}.data") if isinstance(payload, dict) else None
    host = data.get("host") if isinstance(data, dict) else None
    return (event_type if isinstance(event_type, str) else None,
            host if isinstance(host, str) else None)


def describe_body(body: bytes) -> dict:
    """``body_format`` (``json``, ``text`` or ``binary``) and the body in it:
    ``body_json`` (the parsed body, a messagingv2 envelope's inner message parsed too),
    ``body_text`` (UTF-8 that is not JSON, the first TEXT_LIMIT characters) or
    ``body_hex`` (the first HEX_LIMIT bytes); the other two are None."""
    shown: dict[str, Any] = {"body_format": "json", "body_json": None, "body_text": None,
                             "body_hex": None}
    try:
        parsed = orjson.loads(body)
    except (ValueError, TypeError):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            shown["body_format"] = "binary"
            shown["body_hex"] = hexdump(body[:HEX_LIMIT]) + _more(len(body), HEX_LIMIT)
        else:
            shown["body_format"] = "text"
            shown["body_text"] = text[:TEXT_LIMIT] + _more(len(text), TEXT_LIMIT, "characters")
        return shown
    if isinstance(parsed, dict) and isinstance(parsed.get("oslo.message"), str):
        try:
            parsed = {**parsed, "oslo.message": orjson.loads(parsed["oslo.message"])}
        except ValueError:
            pass  # shown as the string it is
    shown["body_json"] = parsed
    return shown


def _more(length: int, limit: int, unit: str = "bytes") -> str:
    return f"\n... ({length} {unit} in all)" if length > limit else ""


def hexdump(data: bytes) -> str:
    """Offset, 16 bytes in hexadecimal and their printable ASCII, a line each."""
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset:offset + 16]
        text = "".join(chr(b) if 0x20 <= b < 0x7f else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {text}")
    return "\n".join(lines)


def find(letters: list[DeadLetter], ident: str) -> list[DeadLetter]:
    """The dead letters ``ident`` names: the one with that dead-letter id, else every
    one with that message id (message ids repeat: ``outbox-<row>`` on each host)."""
    by_id = [d for d in letters if d.dead_letter_id == ident]
    return by_id or [d for d in letters if d.message_id == ident]


@dataclasses.dataclass(frozen=True)
class Replay:
    """Where and how a dead letter goes back onto the bus."""
    exchange: str
    routing_key: str
    body: bytes
    properties: dict  # py-amqp Message keyword arguments


def replay(letter: DeadLetter, user_id: str, default_exchange: str,
           default_routing_key: str) -> Replay:
    """The original exchange and routing key (else the defaults: the control exchange
    and ``<first topic>.info``), persistent, ``user_id`` the replaying user (RabbitMQ
    refuses any other), the original's content type, encoding, message id and headers
    without those of the dead-lettering, marked as a replay of this dead letter."""
    headers = {k: v for k, v in letter.headers.items() if k not in DEAD_LETTER_HEADERS}
    headers[REPLAYED_FROM_HEADER] = letter.id
    properties = {"delivery_mode": 2, "user_id": user_id, "application_headers": headers}
    for name in ("content_type", "content_encoding", "message_id"):
        value = getattr(letter, name)
        if value is not None:
            properties[name] = value
    return Replay(exchange=letter.original_exchange or default_exchange,
                  routing_key=letter.original_routing_key or default_routing_key,
                  body=letter.body, properties=properties)


def _first_death(headers: dict) -> dict:
    """What RabbitMQ's own ``x-death`` header says of the first dead-lettering."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[-1], dict):
        return {}
    first = deaths[-1]  # RabbitMQ puts the most recent first
    keys = first.get("routing-keys")
    moment = first.get("time")
    return {"reason": _text(first.get("reason")), "exchange": _text(first.get("exchange")),
            "routing_key": _text(keys[0]) if isinstance(keys, list) and keys else None,
            "time": timeutil.isoformat(moment) if isinstance(moment, datetime.datetime)
            else None}


def _text(value) -> Optional[str]:
    """A header or property as text: strings as they are, bytes decoded (invalid bytes
    replaced), numbers written out; None for nothing or anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        return str(value)
    return None


def jsonable(value):
    """An AMQP table's value (bytes, datetimes, decimals, nested tables and arrays) as
    JSON can carry it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime.datetime):
        return timeutil.isoformat(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def render(detail: dict) -> str:
    """``detail`` (from ``DeadLetter.detail``) as ``dlq show`` prints it on a terminal,
    after its table of fields: the headers and the body, control characters escaped."""
    lines = ["headers:"]
    lines += [f"  {tables.cell(k)}: {tables.cell(json.dumps(v, ensure_ascii=False))}"
              for k, v in sorted(detail["headers"].items())]
    if detail["body_format"] == "json":
        lines += ["body (JSON):", json.dumps(detail["body_json"], indent=2, ensure_ascii=True)]
    elif detail["body_format"] == "text":
        lines += ["body (text, not JSON):",
                  "\n".join(tables.cell(line) for line in detail["body_text"].split("\n"))]
    else:
        lines += ["body (binary):", detail["body_hex"]]
    return "\n".join(lines)
