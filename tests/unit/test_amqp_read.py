"""amqp_frames.read_available: whole frames out of whatever the socket holds, the rest
kept where py-amqp's own reads find it."""

from __future__ import annotations

import socket
import struct

import pytest
from amqp.exceptions import UnexpectedFrame
from amqp.transport import TCPTransport

from lifecycle_common import amqp_frames


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


class FakeConnection:
    """What read_available uses of a py-amqp Connection: its transport and its frame
    handler."""

    def __init__(self, sock: socket.socket, fail_on: bytes | None = None):
        transport = TCPTransport.__new__(TCPTransport)
        transport.sock = sock
        transport.raise_on_initial_eintr = True
        transport._setup_transport()
        self.transport = transport
        self.frames: list[tuple[int, int, bytes]] = []
        self._fail_on = fail_on

    def on_inbound_frame(self, f):
        if f[2] == self._fail_on:
            raise RuntimeError("callback failed")
        self.frames.append(f)


@pytest.fixture
def pair():
    ours, broker = socket.socketpair()
    yield ours, broker
    ours.close()
    broker.close()


def test_every_whole_frame_is_handled_in_order(pair):
    ours, broker = pair
    conn = FakeConnection(ours)
    sent = [(1, 1, b"method"), (2, 1, b"header"), (3, 1, b"x" * 5000), (8, 0, b"")]
    broker.sendall(b"".join(frame(*f) for f in sent))
    assert amqp_frames.read_available(conn) == 4
    assert conn.frames == sent
    assert conn.transport._read_buffer == b""


def test_nothing_waiting_returns_at_once(pair):
    ours, _ = pair
    conn = FakeConnection(ours)
    assert amqp_frames.read_available(conn) == 0


def test_an_incomplete_frame_waits_for_its_rest(pair):
    ours, broker = pair
    conn = FakeConnection(ours)
    whole = frame(3, 1, b"body-" * 100)
    broker.sendall(frame(1, 1, b"first") + whole[:123])
    assert amqp_frames.read_available(conn) == 1
    assert conn.transport._read_buffer == whole[:123]
    broker.sendall(whole[123:])
    assert amqp_frames.read_available(conn) == 1
    assert conn.frames[-1] == (3, 1, b"body-" * 100)


def test_py_amqps_own_read_finishes_a_frame_begun_here(pair):
    ours, broker = pair
    conn = FakeConnection(ours)
    whole = frame(1, 2, b"a method payload")
    broker.sendall(whole[:5])
    assert amqp_frames.read_available(conn) == 0
    broker.sendall(whole[5:])
    with conn.transport.having_timeout(1.0):
        assert conn.transport.read_frame() == (1, 2, b"a method payload")


def test_frames_after_a_failing_callback_stay_buffered(pair):
    ours, broker = pair
    conn = FakeConnection(ours, fail_on=b"bad")
    rest = frame(1, 1, b"after")
    broker.sendall(frame(1, 1, b"before") + frame(1, 1, b"bad") + rest)
    with pytest.raises(RuntimeError):
        amqp_frames.read_available(conn)
    assert conn.frames == [(1, 1, b"before")]
    assert conn.transport._read_buffer == rest


def test_a_bad_frame_end_is_refused(pair):
    ours, broker = pair
    conn = FakeConnection(ours)
    broker.sendall(frame(1, 1, b"payload")[:-1] + b"\x00")
    with pytest.raises(UnexpectedFrame, match="frame end"):
        amqp_frames.read_available(conn)


def test_a_closed_connection_is_an_error(pair):
    ours, broker = pair
    conn = FakeConnection(ours)
    broker.close()
    with pytest.raises(OSError, match="closed"):
        amqp_frames.read_available(conn)
