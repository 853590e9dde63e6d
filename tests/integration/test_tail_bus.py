"""``events tail`` on a real RabbitMQ: a queue of its own (the consumers' queue keeps
every message), hostile bodies shown as unreadable, --count, and a missing exchange."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from consumer.topology import Topology, declare
from lab.pipeline import command
from tests.integration.test_consumer_service import ROUTING_KEY, body
from tests.support.streams import Lines

pytestmark = pytest.mark.integration


def tail(tmp_path, isolation, *argv):
    config = tmp_path / "tail.conf"
    config.write_text(f"[DEFAULT]\ntransport_url = {isolation.transport_url}\n"
                      f"control_exchange = {isolation.exchange}\n")
    return subprocess.Popen([command("lifecycle-manage"), "--config-file", str(config),
                             "events", "tail", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_tail_shows_every_message_and_takes_none_from_the_consumers_queue(amqp_isolation,
                                                                         tmp_path):
    queue = amqp_isolation.queue_name("consumer")
    declare(amqp_isolation.channel, Topology(exchange=amqp_isolation.exchange, queue=queue,
                                             routing_key=ROUTING_KEY))
    proc = tail(tmp_path, amqp_isolation, "--format", "json", "--count", "3", "--timeout", "20")
    try:
        Lines(proc.stderr).until(lambda line: "watching exchange" in line, timeout=15)
        vm = str(uuid.uuid4())
        amqp_isolation.publish(b"\xff\x1b[2J not json")
        amqp_isolation.publish(body(1, vm))
        amqp_isolation.publish(b'{"oslo.version": "2.0", "oslo.message": "[]"}')
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event_type"] for r in records] == [None, "instance.started", None]
    assert "not JSON" in records[0]["error"] and records[2]["error"]
    assert (records[1]["uuid"], records[1]["power_state"], records[1]["seq"]) == (vm, "running", 1)
    assert amqp_isolation.message_count(queue) == 3


def test_tail_of_an_exchange_that_does_not_exist_says_so(amqp_isolation, tmp_path):
    proc = tail(tmp_path, amqp_isolation, "--timeout", "5")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1 and out == ""
    assert f"exchange '{amqp_isolation.exchange}' does not exist" in err
