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


# -- publisher confirms, read without py-amqp's generic dispatch -----------------------

def real_connection(sock: socket.socket):
    """A py-amqp Connection (never connected) on ``sock``, with channel 1 open and its
    confirm callbacks recording what they are told."""
    import amqp
    from amqp.method_framing import frame_handler

    conn = amqp.Connection("127.0.0.1:1")
    conn.transport = FakeConnection(sock).transport
    conn.channels = {}
    channel = amqp.Channel(conn, 1)
    seen: list[tuple] = []
    channel.events["basic_ack"].add(lambda tag, multiple: seen.append(("ack", tag, multiple)))
    channel.events["basic_nack"].add(lambda tag, multiple: seen.append(("nack", tag, multiple)))
    channel.events["basic_return"].add(
        lambda exc, exchange, key, message: seen.append(("return", key, message.body)))
    conn.on_inbound_frame = frame_handler(conn, conn.on_inbound_method)
    return conn, channel, seen


def confirm(method: int, tag: int, bits: int, channel: int = 1) -> bytes:
    return frame(1, channel, struct.pack(">HHQB", 60, method, tag, bits))


CONFIRMS = [confirm(80, 1, 0), confirm(80, 7, 1), confirm(120, 8, 0), confirm(120, 9, 3),
            confirm(80, 2**64 - 1, 1)]


def test_confirms_have_the_effect_py_amqps_handler_has(pair):
    ours, broker = pair
    fast, _, fast_seen = real_connection(ours)
    broker.sendall(b"".join(CONFIRMS))
    assert amqp_frames.read_available(fast) == len(CONFIRMS)

    slow, _, slow_seen = real_connection(ours)
    for data in CONFIRMS:
        slow.on_inbound_frame((data[0], 1, data[7:-1]))
    assert fast_seen == slow_seen == [("ack", 1, False), ("ack", 7, True), ("nack", 8, False),
                                      ("nack", 9, True), ("ack", 2**64 - 1, True)]
    assert fast.bytes_recv == slow.bytes_recv == len(CONFIRMS)  # its heartbeat check


def returned(channel: int = 1) -> list[bytes]:
    """basic.return of a 3-byte message: method, header, body frames."""
    args = (struct.pack(">H", 312) + bytes((8,)) + b"NO_ROUTE" + bytes((2,)) + b"ex"
            + bytes((6,)) + b"a.info")
    header = struct.pack(">HHQH", 60, 0, 3, 0)
    return [frame(1, channel, struct.pack(">HH", 60, 50) + args), frame(2, channel, header),
            frame(3, channel, b"abc")]


def test_a_return_then_its_ack_are_seen_in_order(pair):
    ours, broker = pair
    conn, _, seen = real_connection(ours)
    method, header, body = returned()
    broker.sendall(method + header)  # the content split over two reads
    amqp_frames.read_available(conn)
    broker.sendall(body + confirm(80, 5, 0))
    amqp_frames.read_available(conn)
    assert seen == [("return", "a.info", b"abc"), ("ack", 5, False)]


def test_an_ack_inside_a_content_is_left_to_py_amqp_which_refuses_it(pair):
    ours, broker = pair
    conn, _, seen = real_connection(ours)
    method, header, _ = returned()
    broker.sendall(method + header + confirm(80, 5, 0))
    with pytest.raises(UnexpectedFrame):
        amqp_frames.read_available(conn)
    assert seen == []


def test_a_confirm_on_a_closing_or_unknown_channel_is_left_to_py_amqp(pair):
    ours, broker = pair
    conn, channel, seen = real_connection(ours)
    channel.is_closing = True
    broker.sendall(confirm(80, 5, 0))
    amqp_frames.read_available(conn)  # py-amqp ignores it, with a warning
    assert seen == [] and conn.bytes_recv == 1
    broker.sendall(confirm(80, 6, 0, channel=2))
    with pytest.raises(KeyError):  # py-amqp's own error for a channel it does not know
        amqp_frames.read_available(conn)
