"""Reading what the broker has sent on a py-amqp connection, without waiting for more.

py-amqp's ``drain_events`` reads until a whole *method* has arrived: a heartbeat frame
is not one, so after a heartbeat it goes on waiting for the next frame, up to its
timeout. A loop that drains "what is there" would then stall for that whole timeout
every time the broker sends a heartbeat. These helpers read frame by frame instead.

py-amqp also reads each frame in three ``recv`` calls of exactly its header, payload
and end byte, and sets the socket's timeout around each: nine system calls or more
per delivered message. ``read_available`` takes whatever the socket holds in one
``recv`` and splits it into frames itself, handing each to py-amqp's own frame handler
(callbacks run there, as under ``drain_events``). An incomplete last frame is left in
py-amqp's read buffer, which its own reads take first, so the two ways of reading can
be mixed on one connection.
"""

from __future__ import annotations

import select
import socket
import struct

import amqp
import amqp.transport
from amqp.exceptions import UnexpectedFrame

# A frame the broker has begun to send arrives whole within this; py-amqp keeps a
# partial frame for the next read if it does not (socket.timeout is raised).
FRAME_WAIT = 1.0

RECV_SIZE = 256 * 1024  # bytes taken from the socket at once, at most
_HEADER = struct.Struct(">BHI")  # frame type, channel, payload size
_FRAME_END = 0xCE


def readable(connection: amqp.Connection) -> bool:
    """Whether bytes from the broker wait in the socket."""
    sock = connection.transport.sock
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


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
    """Hand each whole frame of ``buf`` to py-amqp; keep the rest in its buffer, also
    when a callback raises (what follows the failing frame is not lost)."""
    offset, handled, end = 0, 0, len(buf)
    try:
        while end - offset >= _HEADER.size:
            frame_type, channel, size = _HEADER.unpack_from(buf, offset)
            start = offset + _HEADER.size
            if end - start < size + 1:
                break
            if buf[start + size] != _FRAME_END:
                raise UnexpectedFrame(f"bad frame end byte {buf[start + size]:#04x} "
                                      f"after a type {frame_type} frame")
            offset = start + size + 1
            handled += 1
            connection.on_inbound_frame((frame_type, channel, buf[start:start + size]))
    finally:
        transport._read_buffer = buf[offset:]
    return handled


def _read_available_frame_by_frame(connection: amqp.Connection) -> int:
    handled = 0
    while readable(connection):
        read_frame(connection)
        handled += 1
    return handled
