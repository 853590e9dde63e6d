"""Reading what the broker sent must not wait for more after a heartbeat frame."""

import time

import kombu

from lifecycle_common import amqp_frames


def test_a_heartbeat_alone_is_read_without_waiting_for_another_frame(rabbitmq, wait_for):
    conn = kombu.Connection(rabbitmq, heartbeat=2, connect_timeout=5)
    conn.connect()
    try:
        transport = conn.connection
        transport.send_heartbeat()  # so the broker counts us alive
        # Nothing else happens on this connection: what arrives is a heartbeat frame.
        wait_for(lambda: amqp_frames.readable(transport), timeout=10,
                 message="the broker's heartbeat")
        started = time.monotonic()
        amqp_frames.read_available(transport)
        took = time.monotonic() - started
        assert not amqp_frames.readable(transport)
        # drain_events would have waited for a method until its timeout (FRAME_WAIT).
        assert took < amqp_frames.FRAME_WAIT / 2, f"reading one heartbeat took {took:.3f}s"
    finally:
        conn.release()


def test_deliveries_read_in_bulk_arrive_whole_and_in_order(amqp_isolation, wait_for):
    queue = amqp_isolation.declare_queue("bulk", "bulk.info")
    bodies = [f"message {i} ".encode() * (1 + i % 300) for i in range(3000)]
    for body in bodies:
        amqp_isolation.publish(body, routing_key="bulk.info")
    conn = kombu.Connection(amqp_isolation.url, heartbeat=0, connect_timeout=5)
    conn.connect()
    try:
        channel = conn.channel()
        channel.basic_qos(0, 500, False)
        received = []

        def on_message(message):
            received.append(message.body)
            channel.basic_ack(message.delivery_tag)

        channel.basic_consume(queue, callback=on_message)
        transport = conn.connection

        def all_received() -> bool:
            amqp_frames.read_available(transport)
            return len(received) == len(bodies)

        wait_for(all_received, timeout=30, interval=0.001, message="every delivery")
        assert received == bodies
    finally:
        conn.release()
