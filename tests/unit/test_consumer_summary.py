import logging

from consumer.amqp_queue import BatchQueue
from consumer.service import ConsumerService
from consumer.topology import Topology
from lifecycle_common import broker


def test_summary_says_what_changed_since_the_last_one_and_nothing_when_idle(caplog):
    queue = BatchQueue(broker.Connector(broker.plain("rabbit://127.0.0.1/")),  # never connected
                       Topology(exchange="x", queue="q", routing_key="k"), 1, 0)
    service = ConsumerService(queue=queue, store=None, host_down_after=30, retry_max=1)
    caplog.set_level(logging.INFO, logger="consumer.service")
    service.stats.applied += 41
    service.stats.batches += 3
    service._summarise()
    assert "41 applied" in caplog.text and "3 batches" in caplog.text
    caplog.clear()
    service._summarise()
    assert caplog.text == ""
    service.stats.dead_lettered += 1
    service._summarise()
    assert "1 dead lettered" in caplog.text and "0 applied" in caplog.text
