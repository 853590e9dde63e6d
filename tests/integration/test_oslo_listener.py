"""A stock oslo.messaging notification listener consumes what the agent publishes: its
lifecycle events, inventories and heartbeats, and each type of fault."""

from __future__ import annotations

import json
import threading

import pytest

from lifecycle_common import wire
from lifecycle_common.wire import payloads, schemas, vocabulary

from .test_agent import HOST, RunningAgent, make_conf

pytestmark = pytest.mark.integration


class Endpoint:
    def __init__(self):
        self.received: list[dict] = []
        self.lock = threading.Lock()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.received.append({"publisher_id": publisher_id, "event_type": event_type,
                                  "payload": payload, "metadata": metadata})

    def of_type(self, prefix: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["event_type"].startswith(prefix)]


@pytest.fixture
def oslo_listener(amqp_isolation, wait_for):
    import oslo_messaging
    from oslo_config import cfg

    conf = cfg.ConfigOpts()
    conf(args=[], default_config_files=[], default_config_dirs=[])
    url = amqp_isolation.transport_url.rstrip("/") + "/?amqp_durable_queues=true"
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    pool = amqp_isolation.queue_name("oslo")  # the listener's queue is named after its pool
    endpoint = Endpoint()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic="notifications", exchange=amqp_isolation.exchange)],
        [endpoint], executor="threading", pool=pool)
    listener.start()
    try:
        def queue_exists():
            try:
                amqp_isolation.message_count(pool)
                return True
            except Exception:  # noqa: BLE001 - not declared yet (the channel is closed)
                amqp_isolation.channel = amqp_isolation._conn.channel()
                return False
        wait_for(queue_exists, timeout=15, interval=0.05, message="the listener's queue")
        yield endpoint
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


def _validate(payload: dict) -> None:
    key = payloads.OBJECT_KEY
    assert payload[f"{key}.namespace"] == payloads.NAMESPACE
    name, version = payload[f"{key}.name"], payload[f"{key}.version"]
    schemas.validator(name, version).validate(payload[f"{key}.data"])


def test_stock_listener_receives_the_agents_notifications(
        tmp_path, amqp_isolation, oslo_listener, libvirt_conn, wait_for):
    running = RunningAgent(make_conf(tmp_path, amqp_isolation.exchange,
                                     amqp_isolation.transport_url))
    try:
        (inventory,) = wait_for(lambda: oslo_listener.of_type("host.inventory"), timeout=15,
                                message="the inventory through oslo.messaging")
        test_dom = libvirt_conn.lookupByName("test")
        test_dom.suspend()
        wait_for(lambda: oslo_listener.of_type("instance."), timeout=15)
        test_dom.resume()
        events = wait_for(lambda: len(oslo_listener.of_type("instance.")) >= 2 and
                          oslo_listener.of_type("instance."), timeout=15,
                          message="two instance events through oslo.messaging")
        wait_for(lambda: oslo_listener.of_type("host.heartbeat"), timeout=10)
    finally:
        running.stop()

    assert inventory["publisher_id"] == f"lifecycle-agent:{HOST}"
    assert inventory["payload"]["lifecycle_object.name"] == "HostInventoryPayload"
    assert inventory["payload"]["lifecycle_object.data"]["host"] == HOST
    assert [e["event_type"] for e in events] == ["instance.paused", "instance.resumed"]
    for note in [inventory, *events, *oslo_listener.of_type("host.heartbeat")]:
        assert note["publisher_id"] == f"lifecycle-agent:{HOST}"
        assert note["metadata"]["message_id"]
        assert note["metadata"]["timestamp"]
        _validate(note["payload"])
    data = [e["payload"]["lifecycle_object.data"] for e in events]
    assert [d["uuid"] for d in data] == [test_dom.UUIDString()] * 2
    assert [d["power_state"] for d in data] == ["paused", "running"]
    assert data[0]["seq"] < data[1]["seq"]


@pytest.mark.parametrize("fault", list(vocabulary.Fault), ids=lambda f: f.value)
def test_stock_listener_receives_each_fault_type(amqp_isolation, oslo_listener, wait_for, fault):
    """Each fault sample, as an agent publishes it (the wire's own encoding), reaches a
    stock listener with its event type, publisher, metadata and a valid payload."""
    sample = json.loads((schemas.SAMPLE_DIR / f"{fault.event_type}.json").read_text())
    note = wire.decode(json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(sample)}))
    # With the properties the agent's publisher gives (lifecycle_common/amqp_frames.py).
    amqp_isolation.publish(wire.encode(note), message_id=note.message_id,
                           content_type="application/json", content_encoding="utf-8")
    (received,) = wait_for(lambda: oslo_listener.of_type(fault.event_type), timeout=15,
                           message=f"{fault.event_type} through oslo.messaging")
    assert received["event_type"] == fault.event_type
    assert received["publisher_id"] == sample["publisher_id"]
    assert received["metadata"]["message_id"] == sample["message_id"]
    assert received["metadata"]["timestamp"] == sample["timestamp"]
    assert received["payload"] == sample["payload"]
    _validate(received["payload"])
