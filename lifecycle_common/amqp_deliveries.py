"""Deliveries read straight from the frames the broker sent, beside py-amqp.

py-amqp stays the protocol engine of a consuming connection: it connects, opens the
channel, starts the consumer and handles every frame but those of a ``basic.deliver``
to this consumer. Those (a method frame, a content header frame, body frames: AMQP
0-9-1 section 4.2.6) are parsed here into a ``Delivery``, the few attributes the
consumer reads of ``amqp.Message`` (``body``, ``properties``, ``delivery_info``,
``delivery_tag``), and handed to the consumer's callback.

Why: py-amqp spends about 21 microseconds of Python on each delivery here (a generic
``Message``, its arguments unpacked by a format-string interpreter, the channel's method
dispatch, the body decoded to text); this reads the three frames in about 5.7
(benchmarks/micro_consumer.py, an 859-byte event, on this project's machines). The
usual delivery, whose three frames arrived together, is read in one go
(``_whole_delivery``); any other arrangement frame by frame. tests/unit/
test_amqp_deliveries.py compares the deliveries with py-amqp's however the bytes are cut
into reads, and tests/integration/test_amqp_deliveries.py against a real RabbitMQ.

Reading is ``amqp_frames.read_available``'s: one ``recv`` of whatever the socket holds,
split into whole frames, an incomplete frame left in py-amqp's read buffer (where its
own reads find it). A delivery whose frames span two reads is finished on the next.
Over TLS the socket cannot be read without waiting: frames are read one by one by
py-amqp and every delivery comes through py-amqp as an ``amqp.Message``, which the
consumer reads the same way.

The body is the bytes the broker sent (py-amqp's channels decode it to ``str`` when a
content encoding is set, and give ``""`` for an empty one); the properties are
py-amqp's, decoded the same way.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Callable, Optional

import amqp
import amqp.transport
from amqp.exceptions import UnexpectedFrame
from amqp.serialization import decode_properties_basic

from lifecycle_common import amqp_frames

_METHOD, _HEADER, _BODY, _HEARTBEAT = 1, 2, 3, 8
_DELIVER = struct.pack(">HH", 60, 60)  # basic.deliver's class and method ids
_BASIC_CLASS = 60
_FRAME_HEAD = struct.Struct(">BHI")
_TAG_AND_BIT = struct.Struct(">QB")   # delivery-tag, redelivered
_CONTENT_HEAD = struct.Struct(">HHQ")  # class, weight, body size
_FRAME_END = 0xCE
_TEXT = "utf-8"
_RESTS_REMEMBERED = 256  # combinations of redelivered, exchange and routing key


class Delivery:
    """One message delivered to a consumer: what the consumer reads of it, under the
    names ``amqp.Message`` gives them."""

    __slots__ = ("consumer_tag", "delivery_tag", "redelivered", "exchange", "routing_key",
                 "properties", "body")

    def __init__(self, consumer_tag: str, delivery_tag: int, redelivered: bool,
                 exchange: str, routing_key: str, properties: dict, body: bytes):
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.body = body

    @property
    def delivery_info(self) -> dict:
        """As ``amqp.Message.delivery_info``."""
        return {"consumer_tag": self.consumer_tag, "delivery_tag": self.delivery_tag,
                "redelivered": self.redelivered, "exchange": self.exchange,
                "routing_key": self.routing_key}

    @property
    def headers(self) -> Optional[dict]:
        return self.properties.get("application_headers")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Delivery):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    __hash__ = object.__hash__  # a delivery is itself: two of the same bytes are two

    def __repr__(self) -> str:
        return (f"Delivery(delivery_tag={self.delivery_tag}, routing_key="
                f"{self.routing_key!r}, properties={self.properties!r}, "
                f"body={self.body[:60]!r}{'...' if len(self.body) > 60 else ''})")


class _Assembling:
    """A delivery whose method frame arrived, waiting for its header and body."""
    __slots__ = ("args", "properties", "size", "chunks", "received")

    def __init__(self, args: tuple):
        self.args = args
        self.properties: Optional[dict] = None
        self.size = 0
        self.chunks: list[bytes] = []
        self.received = 0


class DeliveryReader:
    """Reads a consuming connection: deliveries on ``channel_id`` to ``consumer_tag``
    are parsed here and handed to ``on_delivery``; every other frame goes to
    py-amqp's own handler (callbacks run there, as under ``drain_events``)."""

    def __init__(self, connection: amqp.Connection, channel_id: int, consumer_tag: str,
                 on_delivery: Callable[[Delivery], Any]):
        self._connection = connection
        self._channel_id = channel_id
        self._consumer_tag = consumer_tag.encode(_TEXT)
        self._consumer_tag_text = consumer_tag
        self._on_delivery = on_delivery
        self._assembling: Optional[_Assembling] = None
        # basic.deliver's class and method ids and our consumer tag, as a frame's
        # arguments begin; what follows the delivery tag -> (redelivered, exchange,
        # routing key), as read from those bytes.
        tag = self._consumer_tag
        self._deliver_prefix = _DELIVER + bytes((min(len(tag), 255),)) + tag
        self._deliver_rests: dict[bytes, tuple] = {}

    def read_available(self) -> int:
        """Handle every whole frame the broker has sent so far, and return how many.
        Never waits (but over TLS, see the module's docstring)."""
        connection = self._connection
        transport = connection.transport
        if type(transport) is not amqp.transport.TCPTransport:
            return amqp_frames.read_available(connection)  # TLS: py-amqp's way
        handled = 0
        while True:
            try:
                data = transport.sock.recv(amqp_frames.RECV_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return handled
            if not data:
                raise OSError("Server unexpectedly closed connection")
            handled += self.handle_frames(transport._read_buffer + data)
            if len(data) < amqp_frames.RECV_SIZE:
                return handled

    def handle_frames(self, buf: bytes) -> int:
        """Handle each whole frame of ``buf``; keep the rest in py-amqp's read buffer,
        also when a callback raises (what follows the failing frame is not lost)."""
        connection = self._connection
        channel_id = self._channel_id
        unpack_head = _FRAME_HEAD.unpack_from
        offset, handled, end = 0, 0, len(buf)
        try:
            while end - offset >= 7:
                frame_type, channel, size = unpack_head(buf, offset)
                start = offset + 7
                stop = start + size
                if stop >= end:
                    break
                if buf[stop] != _FRAME_END:
                    raise UnexpectedFrame(f"bad frame end byte {buf[stop]:#04x} after a "
                                          f"type {frame_type} frame")
                if channel == channel_id and frame_type != _HEARTBEAT:
                    if self._assembling is not None:
                        offset = stop + 1
                        handled += 1
                        self._content(frame_type, buf, start, stop)
                        continue
                    if frame_type == _METHOD and buf[start:start + 4] == _DELIVER:
                        args = self._deliver_args(buf, start, stop)
                        if args is not None:
                            whole = self._whole_delivery(buf, stop + 1, end, args)
                            if whole is not None:
                                delivery, offset, frames = whole
                                handled += frames
                                self._on_delivery(delivery)
                                continue
                            self._assembling = _Assembling(args)
                            offset = stop + 1
                            handled += 1
                            continue
                offset = stop + 1
                handled += 1
                connection.on_inbound_frame((frame_type, channel, buf[start:stop]))
        finally:
            connection.transport._read_buffer = buf[offset:]
            connection.bytes_recv += handled  # py-amqp's heartbeat check counts frames
        return handled

    def _deliver_args(self, buf: bytes, start: int, stop: int) -> Optional[tuple]:
        """The arguments of a basic.deliver method frame if it is to our consumer (None
        leaves it to py-amqp): consumer tag, delivery tag, redelivered, exchange,
        routing key. What follows the delivery tag (redelivered, exchange, routing key:
        a few combinations on a queue) is read once (``_deliver_args_plainly``) and
        remembered by its bytes: 0.83 us a delivery against 1.15 (best of 9, this
        project's machine; tests/unit/test_amqp_deliveries.py holds it to the plain
        reading). With ``read_ascii_properties``, benchmarks/micro_consumer.py's frames
        take 5.7 us a message against 6.6."""
        if buf.startswith(self._deliver_prefix, start):
            at = start + len(self._deliver_prefix)
            rest = self._deliver_rests.get(buf[at + 8:stop])
            if rest is not None:
                return (self._consumer_tag_text, _unpack_q(buf, at)[0], *rest)
        args = self._deliver_args_plainly(buf, start, stop)
        if args is not None:
            rests = self._deliver_rests
            if len(rests) >= _RESTS_REMEMBERED:
                rests.clear()
            rests[buf[start + len(self._deliver_prefix) + 8:stop]] = args[2:]
        return args

    def _deliver_args_plainly(self, buf: bytes, start: int, stop: int) -> Optional[tuple]:
        """``_deliver_args``, every argument read from the frame (which they depend
        on alone: nothing past ``stop`` is read)."""
        try:
            at = start + 4
            length = buf[at]
            consumer_tag = buf[at + 1:at + 1 + length]
            if consumer_tag != self._consumer_tag:
                return None
            at += 1 + length
            delivery_tag, redelivered = _TAG_AND_BIT.unpack_from(buf, at)
            at += 9
            length = buf[at]
            exchange = buf[at + 1:at + 1 + length]
            at += 1 + length
            length = buf[at]
            routing_key = buf[at + 1:at + 1 + length]
            if at + 1 + length > stop:
                raise IndexError("past the frame's end")
        except (IndexError, struct.error) as exc:
            raise UnexpectedFrame(f"a basic.deliver frame cut short: {exc}") from exc
        return (self._consumer_tag_text, delivery_tag, bool(redelivered & 1),
                exchange.decode(_TEXT, "surrogatepass"),
                routing_key.decode(_TEXT, "surrogatepass"))

    def _whole_delivery(self, buf: bytes, offset: int, end: int,
                        args: tuple) -> Optional[tuple[Delivery, int, int]]:
        """The usual case, in one go: the content header and the one body frame of the
        delivery whose method frame ended at ``offset`` are whole in ``buf``: the
        delivery, where its frames end and how many they were. None:
        anything else (frames to come, a body of several frames, a frame not as
        expected), left to the frame-by-frame way, which also says what is wrong."""
        channel_id = self._channel_id
        if end - offset < 7:
            return None
        frame_type, channel, size = _FRAME_HEAD.unpack_from(buf, offset)
        start = offset + 7
        stop = start + size
        if (frame_type != _HEADER or channel != channel_id or stop >= end
                or buf[stop] != _FRAME_END or size < 14):
            return None
        class_id, _, body_size = _CONTENT_HEAD.unpack_from(buf, start)
        if class_id != _BASIC_CLASS:
            return None
        if body_size == 0:
            body, after, frames = b"", stop + 1, 2
        else:
            if end - stop - 1 < 7:
                return None
            frame_type, channel, size = _FRAME_HEAD.unpack_from(buf, stop + 1)
            body_start = stop + 8
            after = body_start + size + 1
            if (frame_type != _BODY or channel != channel_id or size != body_size
                    or after > end or buf[after - 1] != _FRAME_END):
                return None
            body, frames = buf[body_start:after - 1], 3
        try:
            properties = decode_properties(buf, start + 12, stop)
        except (IndexError, struct.error, ValueError):
            return None
        return Delivery(*args, properties, body), after, frames

    def _content(self, frame_type: int, buf: bytes, start: int, stop: int) -> None:
        """A content frame of the delivery being assembled."""
        assembling = self._assembling
        if assembling.properties is None:
            if frame_type != _HEADER:
                raise UnexpectedFrame(f"Received frame {frame_type} while expecting type: 2")
            try:
                class_id, _, assembling.size = _CONTENT_HEAD.unpack_from(buf, start)
                if class_id != _BASIC_CLASS:
                    raise UnexpectedFrame(f"a content header of class {class_id}, "
                                          f"not basic")
                assembling.properties = decode_properties(buf, start + 12, stop)
            except (IndexError, struct.error, ValueError) as exc:
                raise UnexpectedFrame(f"a content header cut short: {exc}") from exc
            if assembling.size == 0:
                self._delivered(b"")
            return
        if frame_type != _BODY:
            raise UnexpectedFrame(f"Received frame {frame_type} while expecting type: 3")
        chunk = buf[start:stop]
        received = assembling.received + len(chunk)
        if received >= assembling.size:
            if assembling.chunks:
                assembling.chunks.append(chunk)
                chunk = b"".join(assembling.chunks)
            self._delivered(chunk)
        else:
            assembling.chunks.append(chunk)
            assembling.received = received

    def _delivered(self, body: bytes) -> None:
        assembling, self._assembling = self._assembling, None
        self._on_delivery(Delivery(*assembling.args, assembling.properties, body))


# Basic property flags (AMQP 0-9-1, basic class), high bit first, and how each is read:
# a short string, an octet, a timestamp (long long); 0x2000 (headers, a field table)
# is left to py-amqp's decoder.
_SHORT, _OCTET, _TIMESTAMP = 0, 1, 2
_PROPERTIES = ((0x8000, "content_type", _SHORT), (0x4000, "content_encoding", _SHORT),
               (0x1000, "delivery_mode", _OCTET), (0x0800, "priority", _OCTET),
               (0x0400, "correlation_id", _SHORT), (0x0200, "reply_to", _SHORT),
               (0x0100, "expiration", _SHORT), (0x0080, "message_id", _SHORT),
               (0x0040, "timestamp", _TIMESTAMP), (0x0020, "type", _SHORT),
               (0x0010, "user_id", _SHORT), (0x0008, "app_id", _SHORT),
               (0x0004, "cluster_id", _SHORT))
_TABLE_FLAG = 0x2000
_plans: dict[int, tuple[tuple[str, int], ...]] = {}
_unpack_q = struct.Struct(">Q").unpack_from


def decode_properties(buf: bytes, offset: int, stop: int) -> dict:
    """The basic properties at ``buf[offset:stop]``, as py-amqp's
    ``decode_properties_basic`` decodes them: by ``read_ascii_properties`` where they
    are all ASCII (the agent's) and their flags were seen before (planned, without
    headers), else by ``decode_properties_plainly``."""
    plan = _plans.get((buf[offset] << 8) | buf[offset + 1])  # (planned by the plain way)
    if plan is not None:
        properties = read_ascii_properties(buf[offset + 2:stop], plan)
        if properties is not None:
            return properties
    return decode_properties_plainly(buf, offset, stop)


def _plan(flags: int) -> tuple[tuple[str, int], ...]:
    plan = _plans.get(flags)
    if plan is None:
        plan = _plans[flags] = tuple((name, kind) for bit, name, kind in _PROPERTIES
                                     if flags & bit)
    return plan


def decode_properties_plainly(buf: bytes, offset: int, stop: int) -> dict:
    """``decode_properties``, each string decoded in turn: for a message without
    headers (the agent's: five properties) in 1.5 microseconds where py-amqp's takes
    3.2: only the properties its flags name are read, in one loop planned once per
    combination of flags. Raises IndexError, struct.error or ValueError (a
    UnicodeDecodeError among them) where the properties are not whole or not text."""
    flags = (buf[offset] << 8) | buf[offset + 1]
    if flags & _TABLE_FLAG or flags & 1:  # headers, or more flags: py-amqp's way
        return decode_properties_basic(buf[offset:stop], 0)[0]
    plan = _plan(flags)
    try:
        properties, at = _read_properties(buf, offset + 2, plan, "strict")
    except UnicodeDecodeError:  # surrogates encoded: py-amqp decodes them (surrogatepass)
        properties, at = _read_properties(buf, offset + 2, plan, "surrogatepass")
    if at > stop:
        raise ValueError("the properties run past the frame's end")
    return properties


def read_ascii_properties(region: bytes, plan) -> Optional[dict]:
    """The properties ``plan`` names, read from ``region`` (what follows the flags, to
    the frame's end) when it is all ASCII (the agent's properties are: lengths below
    128, delivery mode 2, ASCII text): decoded at once, each string then a slice of
    that text, where ``_read_properties`` decodes each one in turn; in ASCII, UTF-8
    (strict or surrogatepass) and ASCII decode alike. None where the region is not
    ASCII or the properties do not fit in it, which ``_read_properties`` reads (and
    says what is wrong). ``decode_properties`` of the agent's five properties: 1.75 us
    this way against 2.07 plainly (best of 9, this project's machine; tests/unit/
    test_amqp_deliveries.py holds it to the plain way and to py-amqp's decoder)."""
    try:
        text = region.decode("ascii")
    except UnicodeDecodeError:
        return None
    properties = {}
    at = 0
    try:
        for name, kind in plan:
            if kind == 0:  # _SHORT
                end = at + 1 + region[at]
                properties[name] = text[at + 1:end]
                at = end
            elif kind == 1:  # _OCTET
                properties[name] = region[at]
                at += 1
            else:
                properties[name] = _unpack_q(region, at)[0]
                at += 8
    except (IndexError, struct.error):
        return None
    return properties if at <= len(region) else None


def _read_properties(buf: bytes, at: int, plan, errors: str) -> tuple[dict, int]:
    properties = {}
    for name, kind in plan:
        if kind == 0:  # _SHORT
            end = at + 1 + buf[at]
            properties[name] = buf[at + 1:end].decode("utf-8", errors)
            at = end
        elif kind == 1:  # _OCTET
            properties[name] = buf[at]
            at += 1
        else:
            properties[name] = _unpack_q(buf, at)[0]
            at += 8
    return properties, at
