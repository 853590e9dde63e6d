"""Reading what the broker sent must not wait for more after a heartbeat frame."""

import time

import kombu

from lifecycle_common import amqp_read


def test_a_heartbeat_alone_is_read_without_waiting_for_another_frame(rabbitmq, wait_for):
    conn = kombu.Connection(rabbitmq, heartbeat=2, connect_timeout=5)
    conn.connect()
    try:
        transport = conn.connection
        transport.send_heartbeat()  # so the broker counts us alive
        # Nothing else happens on this connection: what arrives is a heartbeat frame.
        wait_for(lambda: amqp_read.readable(transport), timeout=10,
                 message="the broker's heartbeat")
        started = time.monotonic()
        amqp_read.read_available(transport)
        took = time.monotonic() - started
        assert not amqp_read.readable(transport)
        # drain_events would have waited for a method until its timeout (FRAME_WAIT).
        assert took < amqp_read.FRAME_WAIT / 2, f"reading one heartbeat took {took:.3f}s"
    finally:
        conn.release()
