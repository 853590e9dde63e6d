"""Reading what the broker has sent on a py-amqp connection, without waiting for more.

py-amqp's ``drain_events`` reads until a whole *method* has arrived: a heartbeat frame
is not one, so after a heartbeat it goes on waiting for the next frame, up to its
timeout. A loop that drains "what is there" would then stall for that whole timeout
every time the broker sends a heartbeat. These helpers read frame by frame instead.
py-amqp reads no further ahead than the frame it handles, so whatever the socket holds
is exactly what is left to read.
"""

from __future__ import annotations

import select

import amqp

# A frame the broker has begun to send arrives whole within this; py-amqp keeps a
# partial frame for the next read if it does not (socket.timeout is raised).
FRAME_WAIT = 1.0


def readable(connection: amqp.Connection) -> bool:
    """Whether bytes from the broker wait in the socket."""
    sock = connection.transport.sock
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


def read_frame(connection: amqp.Connection) -> None:
    """Read one frame and hand it to py-amqp (callbacks run here); waits at most
    FRAME_WAIT for the rest of a frame that has begun to arrive."""
    connection.blocking_read(FRAME_WAIT)


def read_available(connection: amqp.Connection) -> None:
    """Handle every frame the broker has sent so far, and return."""
    while readable(connection):
        read_frame(connection)
