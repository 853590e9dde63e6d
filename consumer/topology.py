"""Names and declarations of the consumer's exchanges and queues. Pure names, one
function that declares them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Topology:
    exchange: str           # the agents' topic exchange ([DEFAULT] control_exchange)
    queue: str              # shared by competing consumers
    routing_key: str        # '<topic>.info'
    queue_type: str = "classic"
    # One consumer at a time receives the queue's messages, the others stand by
    # (RabbitMQ's x-single-active-consumer): the order the queue holds is the order of
    # delivery (the webhook's per-instance order), whatever processes run on it.
    single_active_consumer: bool = False
    # A classic queue that keeps its messages on disk rather than in memory (RabbitMQ's
    # lazy mode; quorum queues do so by themselves and refuse the argument): a backlog
    # of a day behind a dead endpoint must not raise the broker's memory alarm, which
    # would block every publisher, the agents included.
    lazy: bool = False

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.queue}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.queue}.dlq"

    def queue_arguments(self) -> dict:
        args = {"x-dead-letter-exchange": self.dead_letter_exchange}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        if self.single_active_consumer:
            args["x-single-active-consumer"] = True
        if self.lazy and self.queue_type == "classic":
            args["x-queue-mode"] = "lazy"
        return args


def declare(channel, topology: Topology) -> None:
    """Declare everything, durable, idempotently (py-amqp channel)."""
    channel.exchange_declare(topology.exchange, "topic", durable=True, auto_delete=False)
    declare_dead_letters(channel, topology)
    channel.queue_declare(topology.queue, durable=True, auto_delete=False,
                          arguments=topology.queue_arguments())
    channel.queue_bind(topology.queue, topology.exchange, topology.routing_key)


def declare_dead_letters(channel, topology: Topology) -> None:
    """Declare the dead-letter exchange and queue, durable, idempotently: what the
    dead-letter connection publishes to, whichever broker it reaches."""
    channel.exchange_declare(topology.dead_letter_exchange, "fanout", durable=True,
                             auto_delete=False)
    dlq_args = {"x-queue-type": "quorum"} if topology.queue_type == "quorum" else {}
    channel.queue_declare(topology.dead_letter_queue, durable=True, auto_delete=False,
                          arguments=dlq_args)
    channel.queue_bind(topology.dead_letter_queue, topology.dead_letter_exchange, "")
