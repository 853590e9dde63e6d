"""DeliveryReader against a real RabbitMQ: the deliveries it parses equal what py-amqp
gives for the same messages, and it reads a consuming connection as
amqp_frames.read_available does (whole, in order, heartbeats alone without waiting)."""

from __future__ import annotations

import time

import amqp
import kombu

from lifecycle_common import amqp_frames
from lifecycle_common.amqp_deliveries import DeliveryReader

# Properties a publisher may set (user_id must be the user it logged in as: guest).
PROPERTIES = [
    dict(content_type="application/json", content_encoding="utf-8", message_id="m-1",
         user_id="guest"),
    {},
    dict(content_type="text/plain", content_encoding="latin-1", delivery_mode=1, priority=3,
         correlation_id="c", reply_to="r", expiration="600000", message_id="é🚀",
         timestamp=1_796_000_000, type="t", user_id="guest", app_id="a", cluster_id="k"),
    dict(application_headers={"x-lifecycle-error": "why", "n": 7, "l": [1, "b"],
                              "t": {"a": True}}, content_encoding="utf-8"),
]
BODIES = [b"", b"x", "é".encode() * 5000, bytes(range(256)) * 1200, b"\xff\xfe not text"]


def _consume(url: str, queue: str, count: int, ours: bool, wait_for) -> list:
    conn = kombu.Connection(url, heartbeat=0, connect_timeout=5)
    conn.connect()
    try:
        channel = conn.channel()
        channel.auto_decode = False  # bodies as the broker sent them, as ours
        channel.basic_qos(0, 1000, False)
        received: list = []
        tag = channel.basic_consume(queue, no_ack=True, callback=received.append)
        transport = conn.connection
        if ours:
            reader = DeliveryReader(transport, channel.channel_id, tag, received.append)
            read = reader.read_available
        else:
            def read():
                return amqp_frames.read_available(transport)

        def all_received() -> bool:
            read()
            return len(received) >= count

        wait_for(all_received, timeout=30, interval=0.001, message="every delivery")
        return received
    finally:
        conn.release()


def _as_compared(message) -> tuple:
    info = dict(message.delivery_info)
    info.pop("consumer_tag")  # each consumer its own
    body = message.body if message.body != "" else b""  # py-amqp's empty body is ""
    return info, message.properties, body


def test_parsed_deliveries_equal_py_amqps(amqp_isolation, wait_for):
    theirs_queue = amqp_isolation.declare_queue("py-amqp", "deliveries.#")
    ours_queue = amqp_isolation.declare_queue("ours", "deliveries.#")
    sent = 0
    for properties in PROPERTIES:
        for body in BODIES:
            amqp_isolation.publish(body, routing_key=f"deliveries.{sent}", **properties)
            sent += 1
    theirs = _consume(amqp_isolation.url, theirs_queue, sent, ours=False, wait_for=wait_for)
    ours = _consume(amqp_isolation.url, ours_queue, sent, ours=True, wait_for=wait_for)
    assert all(type(m) is amqp.Message for m in theirs)
    assert [type(m).__name__ for m in ours] == ["Delivery"] * sent
    assert [_as_compared(m) for m in ours] == [_as_compared(m) for m in theirs]


def test_bulk_deliveries_arrive_whole_and_in_order(amqp_isolation, wait_for):
    queue = amqp_isolation.declare_queue("bulk", "bulk.info")
    bodies = [f"message {i} ".encode() * (1 + i % 300) for i in range(3000)]
    for body in bodies:
        amqp_isolation.publish(body, routing_key="bulk.info")
    received = _consume(amqp_isolation.url, queue, len(bodies), ours=True, wait_for=wait_for)
    assert [d.body for d in received] == bodies
    assert [d.delivery_tag for d in received] == list(range(1, len(bodies) + 1))


def test_a_heartbeat_alone_is_read_without_waiting(rabbitmq, wait_for):
    conn = kombu.Connection(rabbitmq, heartbeat=2, connect_timeout=5)
    conn.connect()
    try:
        transport = conn.connection
        channel = conn.channel()
        reader = DeliveryReader(transport, channel.channel_id, "none", lambda d: None)
        transport.send_heartbeat()
        wait_for(lambda: amqp_frames.readable(transport), timeout=10,
                 message="the broker's heartbeat")
        before = transport.bytes_recv
        started = time.monotonic()
        assert reader.read_available() >= 1
        assert time.monotonic() - started < amqp_frames.FRAME_WAIT / 2
        assert transport.bytes_recv > before  # py-amqp's heartbeat check sees it
        conn.heartbeat_check()  # and does not find the broker silent
    finally:
        conn.release()
