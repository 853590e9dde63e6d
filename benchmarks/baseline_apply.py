"""Baseline for apply: a stock oslo.messaging notification listener (threading
executor, durable queues) whose endpoint commits one event per transaction with the
project's own Store, run as a subprocess (oslo.messaging imports eventlet).

Its messages are the agents' own, copied from the apply scenario's second queue onto
an exchange of its own. The clock runs from the first event the endpoint receives to
the last one committed. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main() -> int:
    args = json.loads(sys.argv[1])
    import amqp
    import kombu
    import oslo_messaging
    from oslo_config import cfg

    from consumer.db import engine as db_engine
    from consumer.store import Store
    from lifecycle_common.wire import Notification, payloads, schemas

    store = Store(db_engine.create(args["database"]))
    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[], default_config_dirs=[])
    transport = oslo_messaging.get_notification_transport(
        conf, url=args["transport_url"].rstrip("/") + "/?amqp_durable_queues=true")
    target = oslo_messaging.Target(topic="notifications", exchange=args["exchange"])

    class Endpoint:
        def __init__(self, expected: int):
            self.expected = expected
            self.count = 0
            self.first = None
            self.last = None
            self.lock = threading.Lock()
            self.done = threading.Event()

        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            if self.first is None:
                self.first = time.time()
            key = payloads.OBJECT_KEY
            cls = payloads.payload_class_for(event_type)
            data = payload[f"{key}.data"]
            schemas.validator(payload[f"{key}.name"], payload[f"{key}.version"]).validate(data)
            note = Notification(event_type=event_type, payload=payloads.from_data(cls, data),
                                publisher_id=publisher_id, timestamp=metadata["timestamp"],
                                message_id=metadata["message_id"])
            store.apply_batch([note])  # one event, one transaction
            with self.lock:
                self.count += 1
                if self.count >= self.expected:
                    self.last = time.time()
                    self.done.set()

    def listener(endpoint):
        return oslo_messaging.get_notification_listener(
            transport, [target], [endpoint], executor="threading", pool=args["pool"])

    # The listener declares its own exchange and queue (named after its pool).
    first = listener(Endpoint(0))
    first.start()
    with kombu.Connection(args["rabbitmq_url"], connect_timeout=5) as conn:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.channel().queue_declare(args["pool"], passive=True)
                break
            except amqp.exceptions.NotFound:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    first.stop()
    first.wait()

    # Copy the agents' messages onto the baseline's exchange, in their order.
    moved = 0
    with kombu.Connection(args["rabbitmq_url"], connect_timeout=5) as conn:
        channel = conn.channel()
        while moved < args["events"]:
            message = channel.basic_get(args["copy_queue"], no_ack=True)
            if message is None:
                break
            channel.basic_publish(
                amqp.Message(message.body, content_type="application/json",
                             content_encoding="utf-8", delivery_mode=2),
                exchange=args["exchange"], routing_key="notifications.info")
            moved += 1
        deadline = time.monotonic() + 30
        while conn.channel().queue_declare(args["pool"], passive=True)[1] < moved:
            if time.monotonic() > deadline:
                raise TimeoutError("the copied messages did not all reach the listener's queue")
            time.sleep(0.05)

    endpoint = Endpoint(moved)
    timed = listener(endpoint)
    timed.start()
    endpoint.done.wait(args["time_limit"])
    timed.stop()
    timed.wait()
    transport.cleanup()
    end = endpoint.last or time.time()
    elapsed = end - endpoint.first if endpoint.first else float("nan")
    print(json.dumps({"events": moved, "applied": endpoint.count, "seconds": elapsed,
                      "rate": endpoint.count / elapsed if elapsed else 0.0,
                      "completed": endpoint.done.is_set()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
