"""The AMQP 0-9-1 frames this project writes and reads itself, beside py-amqp.

py-amqp stays the protocol engine: it connects, logs in, opens channels and handles
every frame it is handed (confirms, returns, deliveries, heartbeats). Two hot paths are
done here instead, byte-compatible with it: framing the agent's ``basic.publish``
(``PublishFramer``) and reading what the broker has sent without waiting for more
(``read_available``); and the agent writes what it framed without waiting either
(``send_available``), so that a broker that stops reading its socket cannot hold its
loop.

Writing. py-amqp spends about 50 microseconds of Python on each message it frames
(generic argument and property serialisation, three frames assembled through a shared
buffer). Every message the agent sends has the same shape: a persistent JSON body with
a content type, an encoding, the user it logged in as and perhaps a message id,
published on one channel to one exchange with a handful of routing keys.
``PublishFramer`` packs the parts that never change once, and the rest with a few
``struct`` calls; the frames are byte for byte what py-amqp writes
(tests/unit/test_amqp_frames.py compares them), so the broker cannot tell the
difference and the confirms, returns and heartbeats still go through py-amqp.

Wire format (AMQP 0-9-1, section 4.2.3): every frame is ``type:octet channel:short
size:long payload frame-end:octet(0xCE)``. A publish is a method frame (type 1: class
60, method 40, reserved short, exchange and routing key as short strings, a bit octet
for mandatory), a content header frame (type 2: class 60, weight 0, body size as a long
long, property flags, properties in flag order) and the body in frames of at most
``frame_max - 8`` bytes (type 3).

Reading. py-amqp's ``drain_events`` reads until a whole *method* has arrived: a
heartbeat frame is not one, so after a heartbeat it goes on waiting for the next frame,
up to its timeout. A loop that drains "what is there" would then stall for that whole
timeout every time the broker sends a heartbeat. So these read frame by frame. py-amqp
also reads each frame in three ``recv`` calls of exactly its header, payload and end
byte, and sets the socket's timeout around each: nine system calls or more per
delivered message. ``read_available`` takes whatever the socket holds in one ``recv``
and splits it into frames itself, handing each to py-amqp's own frame handler
(callbacks run there, as under ``drain_events``). An incomplete last frame is left in
py-amqp's read buffer, which its own reads take first, so the two ways of reading can
be mixed on one connection. The publisher confirms among them (``basic.ack``,
``basic.nack``: most of what a publishing connection reads) go straight to the channel's
callbacks (``handle_confirm``), every other frame through py-amqp's handler. Over TLS
the socket cannot be read without waiting, so
frames are read one by one with py-amqp, for as long as the socket or the TLS layer's
own buffer holds bytes.
"""

from __future__ import annotations

import select
import socket
import struct
import weakref
from typing import Optional

import amqp
import amqp.transport
from amqp.exceptions import UnexpectedFrame

FRAME_END = b"\xce"
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC_CLASS, _BASIC_PUBLISH = 60, 40

# Basic property flags, high bit first (content-type is bit 15).
_FLAG_CONTENT_TYPE = 1 << 15
_FLAG_CONTENT_ENCODING = 1 << 14
_FLAG_DELIVERY_MODE = 1 << 12
_FLAG_MESSAGE_ID = 1 << 7
_FLAG_USER_ID = 1 << 4

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
                 content_type: str = "application/json", content_encoding: str = "utf-8",
                 user_id: Optional[str] = None):
        """``user_id``: the AMQP property set on every message, the user this
        connection logged in as (the broker refuses any other)."""
        if frame_max < 4096:  # the protocol's minimum frame_max
            raise ValueError(f"frame_max {frame_max} is below AMQP's minimum of 4096")
        self._channel = channel
        self._chunk = frame_max - 8
        self._exchange = short_string(exchange)
        self._methods: dict[tuple[str, bool], bytes] = {}
        # Properties in flag order: content-type, content-encoding, delivery-mode, then
        # message-id when there is one, then user-id.
        self._fixed_properties = (short_string(content_type) + short_string(content_encoding)
                                  + bytes((PERSISTENT,)))
        self._flags = _FLAG_CONTENT_TYPE | _FLAG_CONTENT_ENCODING | _FLAG_DELIVERY_MODE
        self._user_id = b""
        if user_id is not None:
            self._flags |= _FLAG_USER_ID
            self._user_id = short_string(user_id)

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
            properties = (_header_fixed(_BASIC_CLASS, 0, len(body), self._flags)
                          + self._fixed_properties + self._user_id)
        else:
            properties = (_header_fixed(_BASIC_CLASS, 0, len(body), self._flags | _FLAG_MESSAGE_ID)
                          + self._fixed_properties + short_string(message_id) + self._user_id)
        parts = [self._method(routing_key, mandatory), frame(_HEADER, self._channel, properties)]
        chunk = self._chunk
        if len(body) <= chunk:
            if body:  # an empty body has no body frame
                parts.append(frame(_BODY, self._channel, body))
        else:
            parts += [frame(_BODY, self._channel, body[i:i + chunk])
                      for i in range(0, len(body), chunk)]
        return b"".join(parts)


# -- reading ------------------------------------------------------------------------

# A frame the broker has begun to send arrives whole within this; py-amqp keeps a
# partial frame for the next read if it does not (socket.timeout is raised).
FRAME_WAIT = 1.0

RECV_SIZE = 256 * 1024  # bytes taken from the socket at once, at most
_FRAME_HEAD = struct.Struct(">BHI")  # frame type, channel, payload size
_FRAME_END_BYTE = FRAME_END[0]


def readable(connection: amqp.Connection) -> bool:
    """Whether bytes from the broker wait: in the socket, or over TLS already decrypted
    in the TLS layer (which ``select`` on the socket does not see)."""
    sock = connection.transport.sock
    if sock is None:
        return False
    pending = getattr(sock, "pending", None)  # ssl.SSLSocket
    if pending and pending():
        return True
    poller = select.poll()  # (select cannot watch descriptors of 1024 and up)
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def read_frame(connection: amqp.Connection) -> None:
    """Read one frame and hand it to py-amqp (callbacks run here); waits at most
    FRAME_WAIT for the rest of a frame that has begun to arrive."""
    connection.blocking_read(FRAME_WAIT)


def read_available(connection: amqp.Connection) -> int:
    """Handle every whole frame the broker has sent so far, and return how many.
    Never waits: an incomplete frame stays buffered for the next read."""
    transport = connection.transport
    if type(transport) is not amqp.transport.TCPTransport:
        return _read_available_frame_by_frame(connection)  # TLS: py-amqp's way
    handled = 0
    while True:
        try:
            data = transport.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return handled
        if not data:
            raise OSError("Server unexpectedly closed connection")
        handled += _handle_frames(connection, transport, transport._read_buffer + data)
        if len(data) < RECV_SIZE:
            return handled


def _handle_frames(connection: amqp.Connection, transport, buf: bytes) -> int:
    """Hand each whole frame of ``buf`` to py-amqp (a publisher confirm to
    ``handle_confirm`` first); keep the rest in its buffer, also when a callback raises
    (what follows the failing frame is not lost)."""
    offset, handled, end = 0, 0, len(buf)
    in_content = _in_content(connection)
    try:
        while end - offset >= _FRAME_HEAD.size:
            frame_type, channel, size = _FRAME_HEAD.unpack_from(buf, offset)
            start = offset + _FRAME_HEAD.size
            if end - start < size + 1:
                break
            if buf[start + size] != _FRAME_END_BYTE:
                raise UnexpectedFrame(f"bad frame end byte {buf[start + size]:#04x} "
                                      f"after a type {frame_type} frame")
            offset = start + size + 1
            handled += 1
            if (frame_type == _METHOD and size == _CONFIRM.size and channel not in in_content
                    and handle_confirm(connection, channel, buf, start)):
                continue
            if connection.on_inbound_frame((frame_type, channel, buf[start:start + size])):
                in_content.discard(channel)  # a whole method handled
            elif frame_type != _HEARTBEAT:
                in_content.add(channel)  # a content begun (basic.return): header, body next
    finally:
        transport._read_buffer = buf[offset:]
    return handled


# -- publisher confirms ---------------------------------------------------------------

_HEARTBEAT = 8
_CONFIRM = struct.Struct(">HHQB")  # class, method, delivery tag, bits (multiple first)
_BASIC_ACK, _BASIC_NACK = 80, 120
_CONFIRM_EVENTS = {_BASIC_ACK: "basic_ack", _BASIC_NACK: "basic_nack"}
_CONFIRM_SIGS = {_BASIC_ACK: (_BASIC_CLASS, _BASIC_ACK), _BASIC_NACK: (_BASIC_CLASS, _BASIC_NACK)}
# Per connection: the channels whose content (a returned message's header and body)
# py-amqp is in the middle of; a method frame there is py-amqp's to refuse.
_content_channels: "weakref.WeakKeyDictionary[object, set[int]]" = weakref.WeakKeyDictionary()


def _in_content(connection) -> set[int]:
    try:
        return _content_channels.setdefault(connection, set())
    except TypeError:  # not weakly referenceable (a test's stand-in): nothing kept
        return set()


def handle_confirm(connection: amqp.Connection, channel_id: int, buf: bytes,
                   offset: int) -> bool:
    """If the method frame payload at ``buf[offset:offset + 13]`` is a ``basic.ack`` or
    ``basic.nack`` on an open channel of ``connection``, run that channel's
    ``basic_ack``/``basic_nack`` event callbacks with ``(delivery_tag, multiple)``,
    exactly as py-amqp's ``Channel._on_basic_ack`` would, and return True; otherwise do
    nothing and return False (py-amqp handles the frame, and raises what it raises).

    The same effect as py-amqp's own handling (tests/unit/test_amqp_read.py compares
    them): its frame handler counts the frame in ``bytes_recv`` (its heartbeat check
    reads that) and its channel dispatch decodes the arguments with its generic
    ``loads`` and looks up the method's listeners. A confirm is one 13-byte payload
    read with one ``struct`` call: measured here (``timeit``, one ack frame to a
    callback that does nothing, best of 5, on a busy 2-core machine), 0.8 us against
    3.9 us through py-amqp's ``on_inbound_frame``. Under a burst the broker sends a
    confirm per message or per few messages, so this is a good part of the
    publisher's reading. A channel closing, absent, or with a one-shot
    waiter on the method (py-amqp's own confirm wait) is left to py-amqp."""
    cls, method, delivery_tag, bits = _CONFIRM.unpack_from(buf, offset)
    if cls != _BASIC_CLASS or method not in _CONFIRM_EVENTS:
        return False
    channels = getattr(connection, "channels", None)
    ch = channels.get(channel_id) if channels else None
    if ch is None or ch.is_closing or _CONFIRM_SIGS[method] in ch._pending:
        return False
    connection.bytes_recv += 1
    for callback in ch.events[_CONFIRM_EVENTS[method]]:
        callback(delivery_tag, bool(bits & 1))
    return True


def _read_available_frame_by_frame(connection: amqp.Connection) -> int:
    handled = 0
    while readable(connection):
        read_frame(connection)
        handled += 1
    return handled


# -- writing ------------------------------------------------------------------------

def send_available(connection: amqp.Connection, data: bytes) -> int:
    """Write as much of ``data`` as the socket takes now, without waiting, and return
    how many bytes that was; the caller keeps the rest and writes it when the socket
    is writable again (``writable``), before anything else goes on this connection.

    Over TLS a write cannot stop halfway and be resumed with other data, so all of
    ``data`` is written at once with py-amqp's blocking write, bounded by the
    connection's write timeout (``broker.WRITE_TIMEOUT``): OSError past it."""
    transport = connection.transport
    if type(transport) is not amqp.transport.TCPTransport:
        transport.write(data)
        return len(data)
    try:
        return transport.sock.send(data, socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return 0


def writable(connection: amqp.Connection) -> bool:
    """Whether the socket has room for a small write now (a heartbeat frame, say) that
    would not wait for the broker to read."""
    sock = connection.transport.sock
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return bool(poller.poll(0))
