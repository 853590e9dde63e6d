"""DeliveryReader: the deliveries it parses are py-amqp's, frame for frame, however the
bytes are cut into reads; every other frame goes to py-amqp. The frames are written
by py-amqp's own serialisers. (Against a real broker: tests/integration/
test_amqp_deliveries.py.)"""

from __future__ import annotations

import struct
import types

import amqp
import pytest
from amqp.basic_message import Message
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_handler
from amqp.serialization import dumps

from lifecycle_common import amqp_deliveries, amqp_frames
from lifecycle_common.amqp_deliveries import Delivery, DeliveryReader, decode_properties

TAG = "amq.ctag-test"
CHANNEL = 1
FRAME_MAX = 4096


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return kind.to_bytes(1, "big") + channel.to_bytes(2, "big") + len(payload).to_bytes(
        4, "big") + payload + b"\xce"


def deliver(body: bytes, delivery_tag: int, consumer_tag: str = TAG, channel: int = CHANNEL,
            redelivered: bool = False, exchange: str = "lifecycle",
            routing_key: str = "notifications.info", **properties) -> bytes:
    """The frames of one basic.deliver, serialised by py-amqp."""
    method = b"\x00\x3c\x00\x3c" + dumps("sLbss", (consumer_tag, delivery_tag, redelivered,
                                                   exchange, routing_key))
    message = Message(body, **properties)
    header = (b"\x00\x3c\x00\x00" + len(body).to_bytes(8, "big")
              + message._serialize_properties())
    chunk = FRAME_MAX - 8
    bodies = [frame(3, channel, body[i:i + chunk]) for i in range(0, len(body), chunk)]
    return frame(1, channel, method) + frame(2, channel, header) + b"".join(bodies)


class Connection:
    """A py-amqp Connection, never connected, consuming on CHANNEL with ``TAG`` and
    "other-tag" (the latter's deliveries left to py-amqp); its channel hands bodies
    over as bytes (compared with ours, which are the bytes sent)."""

    def __init__(self):
        self.amqp = amqp.Connection("127.0.0.1:1")
        self.amqp.on_inbound_frame = frame_handler(self.amqp, self.amqp.on_inbound_method)
        self.amqp._transport = types.SimpleNamespace(_read_buffer=b"")
        channel = amqp.Channel(self.amqp, CHANNEL)
        channel.auto_decode = False
        self.theirs: list = []
        self.other: list = []
        channel.callbacks[TAG] = self.theirs.append
        channel.callbacks["other-tag"] = self.other.append
        self.ours: list[Delivery] = []
        self.reader = DeliveryReader(self.amqp, CHANNEL, TAG, self.ours.append)

    def feed_py_amqp(self, data: bytes) -> None:
        amqp_frames._handle_frames(self.amqp, self.amqp._transport, data)

    def feed_ours(self, data: bytes, cut: int | None = None) -> None:
        """``data`` in two reads, cut at ``cut``."""
        transport = self.amqp._transport
        for part in (data[:cut], data[cut:]) if cut is not None else (data,):
            self.reader.handle_frames(transport._read_buffer + part)


def same(ours: Delivery, theirs: amqp.Message) -> bool:
    # py-amqp's body of an empty message is "" (its Message's default), ours b"".
    body = theirs.body if theirs.body != "" else b""
    return (ours.body == body and ours.properties == theirs.properties
            and ours.delivery_info == theirs.delivery_info
            and ours.delivery_tag == theirs.delivery_tag)


PROPERTIES = {
    "the agent's": dict(content_type="application/json", content_encoding="utf-8",
                        delivery_mode=2, message_id="3f9c2a1e", user_id="compute-1"),
    "none": {},
    "every one but headers": dict(
        content_type="text/plain", content_encoding="latin-1", delivery_mode=1, priority=7,
        correlation_id="corr", reply_to="amq.rabbitmq.reply-to", expiration="60000",
        message_id="m" * 255, timestamp=1_796_000_000, type="t", user_id="guest",
        app_id="app", cluster_id="c"),
    "headers": dict(content_type="application/json", delivery_mode=2,
                    application_headers={"x-lifecycle-error": "why", "n": 7,
                                         "nested": {"a": [1, "b"]}}),
    "text not ASCII": dict(message_id="é🚀", user_id="ü"),
}
BODIES = {
    "a notification": b'{"oslo.version": "2.0", "oslo.message": "{}"}' * 20,
    "empty": b"",
    "one frame exactly": b"x" * (FRAME_MAX - 8),
    "three frames": bytes(range(256)) * 40,
    "not UTF-8": b"\xff\xfe\x00",
}


@pytest.mark.parametrize("properties", list(PROPERTIES.values()), ids=list(PROPERTIES))
@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
def test_a_delivery_is_py_amqps_however_its_bytes_are_cut(body, properties):
    data = deliver(body, 7, redelivered=True, **properties)
    reference = Connection()
    reference.feed_py_amqp(data)
    (theirs,) = reference.theirs
    for cut in range(0, len(data) + 1, max(1, len(data) // 300)):
        conn = Connection()
        conn.feed_ours(data, cut)
        assert len(conn.ours) == 1, cut
        assert same(conn.ours[0], theirs), (cut, conn.ours[0], theirs.properties)
        assert conn.amqp._transport._read_buffer == b""
        assert not conn.theirs


def test_many_deliveries_in_one_read_keep_their_order():
    data = b"".join(deliver(b"body %d" % i, i, **PROPERTIES["the agent's"])
                    for i in range(1, 501))
    reference, conn = Connection(), Connection()
    reference.feed_py_amqp(data)
    assert conn.reader.handle_frames(data) == 1500
    assert len(conn.ours) == 500
    assert all(same(o, t) for o, t in zip(conn.ours, reference.theirs))
    assert conn.amqp.bytes_recv == 1500  # py-amqp's heartbeat check sees the traffic


def test_other_frames_go_to_py_amqp_between_a_deliverys_frames():
    """A heartbeat, and a delivery to another consumer, around ours: each handled by
    whom it belongs to."""
    ours = deliver(b"ours", 1)
    theirs = deliver(b"theirs", 2, consumer_tag="other-tag")
    heartbeat = frame(8, 0, b"")
    method_end = ours.index(b"\xce") + 1
    data = ours[:method_end] + heartbeat + ours[method_end:] + theirs + heartbeat
    conn = Connection()
    conn.feed_ours(data)
    assert [d.body for d in conn.ours] == [b"ours"]
    assert [m.body for m in conn.other] == [b"theirs"]


def test_content_of_a_delivery_py_amqp_began_stays_py_amqps():
    """A delivery whose method frame py-amqp read (while it started the consumer, say):
    its content frames are py-amqp's too."""
    data = deliver(b"begun by py-amqp", 1)
    method_end = data.index(b"\xce") + 1
    conn = Connection()
    conn.feed_py_amqp(data[:method_end])
    conn.feed_ours(data[method_end:] + deliver(b"next", 2))
    assert [m.body for m in conn.theirs] == [b"begun by py-amqp"]
    assert [d.body for d in conn.ours] == [b"next"]


def test_a_method_frame_inside_a_delivery_is_refused_as_py_amqp_refuses_it():
    data = deliver(b"body", 1)
    method_end = data.index(b"\xce") + 1
    conn = Connection()
    with pytest.raises(UnexpectedFrame, match="expecting type: 2"):
        conn.feed_ours(data[:method_end] + data[:method_end])


def test_a_bad_frame_end_is_refused():
    data = deliver(b"body", 1)
    with pytest.raises(UnexpectedFrame, match="frame end"):
        Connection().feed_ours(data[:-1] + b"\x00")


def test_a_header_cut_short_is_refused():
    header = b"\x00\x3c\x00\x00" + (4).to_bytes(8, "big") + b"\x80\x00" + b"\x05ab"
    data = deliver(b"", 1)
    method = data[:data.index(b"\xce") + 1]
    with pytest.raises(UnexpectedFrame, match="cut short"):
        Connection().feed_ours(method + frame(2, CHANNEL, header))


def test_a_failing_callback_keeps_what_follows():
    conn = Connection()
    failing = DeliveryReader(conn.amqp, CHANNEL, TAG, lambda d: 1 / 0)
    rest = deliver(b"second", 2)
    with pytest.raises(ZeroDivisionError):
        failing.handle_frames(deliver(b"first", 1) + rest)
    assert conn.amqp._transport._read_buffer == rest


@pytest.mark.parametrize("properties", list(PROPERTIES.values()), ids=list(PROPERTIES))
def test_properties_decode_as_py_amqp_decodes_them(properties):
    from amqp.serialization import decode_properties_basic
    raw = Message(b"", **properties)._serialize_properties()
    assert decode_properties(raw, 0, len(raw)) == decode_properties_basic(raw, 0)[0]


def test_a_delivery_reads_as_an_amqp_message():
    conn = Connection()
    conn.feed_ours(deliver(b"x", 9, application_headers={"h": 1}, user_id="compute-1"))
    (d,) = conn.ours
    assert d.delivery_tag == d.delivery_info["delivery_tag"] == 9
    assert d.headers == {"h": 1} and d.properties.get("user_id") == "compute-1"
    assert d.delivery_info["routing_key"] == "notifications.info"
    assert len({d, d}) == 1  # hashable, by identity (as amqp.Message)


def property_cases() -> list[bytes]:
    """Serialised properties (no headers): each of PROPERTIES, every cut of them, and
    their bytes changed at each position to a value that matters (past ASCII, a length
    past the end)."""
    cases = []
    for properties in PROPERTIES.values():
        if "application_headers" in properties:
            continue
        raw = Message(b"", **properties)._serialize_properties()
        cases.append(raw)
        cases += [raw[:cut] for cut in range(2, len(raw))]
        for at in range(2, len(raw)):
            for value in (0, 1, 0x7F, 0x80, 0xFF, len(raw) - at):
                cases.append(raw[:at] + bytes((value % 256,)) + raw[at + 1:])
        cases.append(raw + b"trailing")
    return cases


def test_properties_decode_as_plainly_and_as_py_amqp_decodes_them():
    from amqp.serialization import decode_properties_basic

    def outcome(decode, raw):
        try:
            return "ok", decode(raw)
        except (IndexError, struct.error, ValueError) as exc:
            return "refused", type(exc), str(exc)
    read_ascii = 0
    for raw in property_cases():
        ours = outcome(lambda r: decode_properties(r, 0, len(r)), raw)
        assert ours == outcome(
            lambda r: amqp_deliveries.decode_properties_plainly(r, 0, len(r)), raw), raw
        if ours[0] == "ok":
            assert ours[1] == decode_properties_basic(raw, 0)[0], raw
            flags = int.from_bytes(raw[:2], "big")
            plan = amqp_deliveries._plan(flags)
            ascii_read = amqp_deliveries.read_ascii_properties(raw[2:], plan)
            if ascii_read is not None:
                read_ascii += 1
                assert ascii_read == ours[1], raw
    assert read_ascii > 100  # the ASCII way is the one tested


def test_deliver_arguments_remembered_are_those_read_plainly():
    """Method frames to our tag and others, redelivered or not, on a few exchanges and
    keys, each read twice (the second time remembered), cut at every length, and with a
    byte changed at every position: the same arguments, or the same refusal."""
    def outcome(read, method):
        try:
            return "ok", read(method, 0, len(method))
        except UnexpectedFrame as exc:
            return "refused", str(exc)
        except ValueError as exc:  # a routing key not UTF-8
            return "error", type(exc)
    methods = []
    for tag in (TAG, "other-tag", TAG + "x", TAG[:-1]):
        for redelivered in (False, True):
            for exchange, key in (("lifecycle", "notifications.info"), ("", "q"),
                                  ("lifecycle", "notifications.error"), ("é", "日")):
                methods.append(b"\x00\x3c\x00\x3c" + dumps("sLbss", (
                    tag, 17 + len(methods), redelivered, exchange, key)))
    variants = []
    for method in methods:
        variants += [method, method]
        variants += [method[:cut] for cut in range(4, len(method))]
        variants += [method + b"trailing"]
        for at in range(4, len(method)):
            for value in (0, 1, 0x80, 0xFF):
                variants.append(method[:at] + bytes((value,)) + method[at + 1:])
    reader = Connection().reader
    plain = Connection().reader
    remembered = 0
    for method in variants:
        expected = outcome(plain._deliver_args_plainly, method)
        assert outcome(reader._deliver_args, method) == expected, method
        remembered += method[reader_prefix_end(reader) + 8:] in reader._deliver_rests
    assert remembered > 50


def reader_prefix_end(reader) -> int:
    return len(reader._deliver_prefix)
