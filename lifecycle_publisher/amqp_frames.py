"""The bytes of an AMQP 0-9-1 ``basic.publish``, built directly.

py-amqp spends about 50 microseconds of Python on each message it frames (generic
argument and property serialisation, three frames assembled through a shared buffer).
Every message the agent sends has the same shape: a persistent JSON body with a content
type, an encoding and perhaps a message id, published on one channel to one exchange
with a handful of routing keys. ``PublishFramer`` packs the parts that never change
once, and the rest with a few ``struct`` calls; the frames are byte for byte what
py-amqp writes (tests/unit/test_amqp_frames.py compares them), so the broker cannot
tell the difference and the confirms, returns and heartbeats still go through py-amqp.

Wire format (AMQP 0-9-1, section 4.2.3): every frame is ``type:octet channel:short
size:long payload frame-end:octet(0xCE)``. A publish is a method frame (type 1: class
60, method 40, reserved short, exchange and routing key as short strings, a bit octet
for mandatory), a content header frame (type 2: class 60, weight 0, body size as a long
long, property flags, properties) and the body in frames of at most ``frame_max - 8``
bytes (type 3).
"""

from __future__ import annotations

import struct
from typing import Optional

FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC_CLASS, _BASIC_PUBLISH = 60, 40

# Basic property flags, high bit first (content-type is bit 15).
_FLAG_CONTENT_TYPE = 1 << 15
_FLAG_CONTENT_ENCODING = 1 << 14
_FLAG_DELIVERY_MODE = 1 << 12
_FLAG_MESSAGE_ID = 1 << 7

PERSISTENT = 2

_frame_head = struct.Struct(">BHI").pack
_header_fixed = struct.Struct(">HHQH").pack


def short_string(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _frame_head(kind, channel, len(payload)) + payload + FRAME_END


class PublishFramer:
    """Frames ``basic.publish`` of persistent messages on one channel and exchange."""

    def __init__(self, channel: int, exchange: str, frame_max: int,
                 content_type: str = "application/json", content_encoding: str = "utf-8"):
        if frame_max < 4096:  # the protocol's minimum frame_max
            raise ValueError(f"frame_max {frame_max} is below AMQP's minimum of 4096")
        self._channel = channel
        self._chunk = frame_max - 8
        self._exchange = short_string(exchange)
        self._methods: dict[tuple[str, bool], bytes] = {}
        # Properties in flag order: content-type, content-encoding, delivery-mode, then
        # message-id when there is one.
        self._fixed_properties = (short_string(content_type) + short_string(content_encoding)
                                  + bytes((PERSISTENT,)))
        self._flags = _FLAG_CONTENT_TYPE | _FLAG_CONTENT_ENCODING | _FLAG_DELIVERY_MODE

    def _method(self, routing_key: str, mandatory: bool) -> bytes:
        key = (routing_key, mandatory)
        method = self._methods.get(key)
        if method is None:
            payload = (struct.pack(">HHH", _BASIC_CLASS, _BASIC_PUBLISH, 0) + self._exchange
                       + short_string(routing_key) + bytes((1 if mandatory else 0,)))
            method = self._methods[key] = frame(_METHOD, self._channel, payload)
        return method

    def publish(self, body: bytes, routing_key: str, mandatory: bool,
                message_id: Optional[str] = None) -> bytes:
        """The frames of one message, ready to be written to the socket."""
        if message_id is None:
            properties = _header_fixed(_BASIC_CLASS, 0, len(body), self._flags) + self._fixed_properties
        else:
            properties = (_header_fixed(_BASIC_CLASS, 0, len(body), self._flags | _FLAG_MESSAGE_ID)
                          + self._fixed_properties + short_string(message_id))
        parts = [self._method(routing_key, mandatory), frame(_HEADER, self._channel, properties)]
        chunk = self._chunk
        if len(body) <= chunk:
            if body:  # an empty body has no body frame
                parts.append(frame(_BODY, self._channel, body))
        else:
            parts += [frame(_BODY, self._channel, body[i:i + chunk])
                      for i in range(0, len(body), chunk)]
        return b"".join(parts)
