"""Reads the queue in batches; every message ends in an ack or a dead-letter.

Delivery guarantee: a message is acknowledged only after the transaction that applied
it committed, or after it was dead-lettered with its reason and the broker confirmed
that; a consumer that dies before then leaves it to be redelivered.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid

import amqp
import kombu
import kombu.exceptions

from lifecycle_common import amqp_frames, broker, timeutil
from consumer.errors import BrokerUnavailable
from consumer.topology import Topology, declare

LOG = logging.getLogger(__name__)

# Headers of a dead letter: why (a sentence, and a word for counting), when, and what
# the original said of itself; ``lifecycle-manage dlq`` reads them.
REASON_HEADER = "x-lifecycle-error"
CAUSE_HEADER = "x-lifecycle-cause"
DEAD_LETTERED_AT_HEADER = "x-lifecycle-dead-lettered-at"  # ISO 8601 UTC
DEAD_LETTER_ID_HEADER = "x-lifecycle-dead-letter-id"      # unique: message ids may repeat
ORIGINAL_USER_HEADER = "x-original-user-id"
# Seconds to wait for the broker to confirm a dead letter. A node that lost its
# cluster's majority would never confirm one: the connection is then given up (the
# original stays unacked and is redelivered, to this consumer or another).
DEAD_LETTER_CONFIRM_TIMEOUT = 30.0


class BatchQueue:
    """One connection: a consuming channel and a confirming channel for dead letters."""

    def __init__(self, connector: broker.Connector, topology: Topology, batch_size: int,
                 linger: float):
        self._connector = connector
        self.topology = topology
        self._batch_size = batch_size
        self._linger = linger
        self._conn: kombu.Connection | None = None
        self._buffer: list[amqp.Message] = []

    def connect(self) -> None:
        try:
            conn, connected_to = self._connector.connect()
        except broker.BrokerConnectError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        where = broker.describe(self._connector.settings, connected_to)
        try:
            self._channel = conn.channel()
            declare(self._channel, self.topology)
            self._channel.basic_qos(0, self._batch_size * 2, False)
            self._dl_channel = conn.channel()
            self._dl_channel.confirm_select()
            self._channel.basic_consume(self.topology.queue, callback=self._buffer.append)
        except (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError) as exc:
            broker.release(conn)
            raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
        self._conn = conn
        self._buffer.clear()
        LOG.info("consuming %s on %s (exchange %s, key %s)", self.topology.queue,
                 where, self.topology.exchange, self.topology.routing_key)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            broker.release(conn)
        self._buffer.clear()

    def next_batch(self, timeout: float) -> list[amqp.Message]:
        """Up to batch_size messages: waits up to ``timeout`` for the first, then takes
        whatever the broker has already sent and whatever arrives within ``linger`` of
        the first: a batch never waits longer than that to fill."""
        with _broker_errors():
            transport = self._conn.connection
            deadline = time.monotonic() + timeout
            while not self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._conn.heartbeat_check()
                    return []
                try:
                    transport.drain_events(timeout=min(remaining, 1.0))
                except socket.timeout:
                    self._conn.heartbeat_check()
            linger_until = time.monotonic() + self._linger
            while len(self._buffer) < self._batch_size:
                if amqp_frames.read_available(transport):  # sent already, not awaited
                    continue
                remaining = linger_until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    transport.drain_events(timeout=remaining)
                except socket.timeout:
                    break
            batch = self._buffer[:self._batch_size]
            del self._buffer[:self._batch_size]
            return batch

    def ack(self, messages: list[amqp.Message]) -> None:
        """Acknowledge ``messages`` (all delivered on this connection) at once."""
        if not messages:
            return
        with _broker_errors():
            last = max(m.delivery_info["delivery_tag"] for m in messages)
            if len(messages) == 1:
                self._channel.basic_ack(last)
            else:
                # Safe: every earlier delivery on this channel is settled before this.
                self._channel.basic_ack(last, multiple=True)

    def dead_letter(self, message: amqp.Message, reason: str, cause: str = "unreadable") -> None:
        """Copy ``message`` to the dead-letter queue with ``reason`` (and ``cause``, its
        word) and wait for the broker's confirm; the caller acks the original afterwards."""
        headers = dict(message.properties.get("application_headers") or {})
        headers[REASON_HEADER] = reason[:1000]
        headers[CAUSE_HEADER] = cause
        headers[DEAD_LETTERED_AT_HEADER] = timeutil.isoformat(timeutil.utcnow())
        headers[DEAD_LETTER_ID_HEADER] = str(uuid.uuid4())
        if message.properties.get("user_id"):
            headers[ORIGINAL_USER_HEADER] = message.properties["user_id"]
        headers["x-original-routing-key"] = message.delivery_info.get("routing_key", "")
        headers["x-original-exchange"] = message.delivery_info.get("exchange", "")
        copy = amqp.Message(message.body, delivery_mode=2, application_headers=headers,
                            content_type=message.properties.get("content_type"),
                            content_encoding=message.properties.get("content_encoding"),
                            message_id=message.properties.get("message_id"))
        with _broker_errors():
            self._dl_channel.basic_publish_confirm(
                copy, exchange=self.topology.dead_letter_exchange,
                routing_key=self.topology.queue, mandatory=True,
                confirm_timeout=DEAD_LETTER_CONFIRM_TIMEOUT)
        LOG.error("dead-lettered message %s to %s: %s", message.properties.get("message_id"),
                  self.topology.dead_letter_queue, reason)

    def keepalive(self) -> None:
        """Service AMQP heartbeats while the caller waits (e.g. for the database)."""
        with _broker_errors():
            self._conn.heartbeat_check()


@contextlib.contextmanager
def _broker_errors():
    try:
        yield
    except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked,
            kombu.exceptions.KombuError) as exc:
        raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
