"""The consumer's dead letters, published on a broker connection of their own.

Delivery guarantee: the original of a dead letter is acked only after the broker
confirmed its copy on the dead-letter queue; until then it stays unacked on the
consuming connection, and if that connection is lost it returns to the queue.

Why a connection of its own: RabbitMQ blocks a connection that publishes during a
memory or disk alarm and then reads nothing more of it, acks included. The consuming
connection never publishes, so it is never blocked: during an alarm the consumer goes
on applying and acking the backlog, and only the messages to dead-letter wait, held
unacked, until this connection unblocks. They count against the consuming channel's
prefetch (twice the batch size): while up to one batch is held, batches stay full;
past that they shrink, and with the whole prefetch held the broker delivers this
consumer nothing more until the dead letters go (competing consumers carry on).

Nothing here raises: a connection that fails, or confirms nothing for
``CONFIRM_TIMEOUT`` while not blocked, is dropped and opened again with back-off
(while something is held), and its copies are published again on the next one.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import amqp
import kombu
import kombu.exceptions

from lifecycle_common import amqp_frames, broker
from lifecycle_common.retry import backoff
from consumer.settlement import DeadLetterBook
from consumer.topology import Topology, declare_dead_letters

LOG = logging.getLogger(__name__)

# Seconds to wait for the broker to confirm a dead letter, time blocked aside. A node
# that lost its cluster's majority would never confirm one: the connection is then
# given up for another (the original stays held meanwhile).
CONFIRM_TIMEOUT = 30.0
# A connection blocked this many times CONFIRM_TIMEOUT is given up all the same, in
# case the next broker of transport_url is not of the same cluster (an alarm blocks
# publishers on every node of one cluster).
BLOCKED_GIVE_UP = 10

# Dead letters published and not yet confirmed, at most: RabbitMQ says it blocked the
# connection only after a publish, so the copies are sent a few at a time, and a write
# never holds the consumer's loop for long.
WINDOW = 32
# Seconds a write may wait for the broker to take any of it: the connection is then
# given up and opened again (its copies wait meanwhile), not the consumer's loop held.
WRITE_TIMEOUT = 5.0

_BROKER_ERRORS = (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError)


class DeadLetterPublisher:
    def __init__(self, settings: broker.BrokerSettings, topology: Topology, retry_max: float,
                 id_header: str):
        """``id_header``: the header holding each copy's unique dead-letter id."""
        self._connector = broker.Connector(settings, write_timeout=WRITE_TIMEOUT,
                                           role="dead-letter connection")
        self.blocked = self._connector.blocked
        self.book = DeadLetterBook(retry_max)
        self._topology = topology
        self._retry_max = retry_max
        self._id_header = id_header
        self._conn: Optional[kombu.Connection] = None
        self._channel = None
        self._where = ""
        self.down_since: Optional[float] = None  # wanted (something held) and not connected
        self._attempt = 0
        self._next_connect = 0.0

    @property
    def held(self) -> int:
        return self.book.held

    def hold(self, tag: int, copy: amqp.Message, dead_letter_id: str,
             on_done: Optional[Callable[[], None]] = None) -> None:
        """Publish ``copy`` (at the next ``pump``); the original delivered as ``tag``
        is to be acked once it is confirmed."""
        self.book.hold(tag, copy, dead_letter_id, on_done)
        if self.blocked.is_blocked:
            LOG.warning("dead letter %s held: %s blocks the dead-letter connection (%s); "
                        "%d held", dead_letter_id, self._where, self.blocked.reason,
                        self.book.held)

    def socket(self):
        """The connection's socket, to wait on with the consuming one; None."""
        conn = self._conn
        return None if conn is None else conn.connection.transport.sock

    def next_deadline(self) -> Optional[float]:
        """When ``pump`` has something to do without anything arriving (a retry, a
        reconnection); None: nothing."""
        if not self.book.held:
            return None
        if self._conn is None:
            return self._next_connect
        if self.blocked.is_blocked or self.book.in_flight >= WINDOW:
            return None  # what comes next, an unblock or a confirm, arrives on the socket
        return self.book.next_retry()

    def pump(self) -> list[tuple[int, Optional[Callable[[], None]]]]:
        """Read what the broker sent, publish the copies due, service heartbeats;
        returns the originals whose copy is now confirmed (ack them), each with its
        ``on_done``."""
        now = time.monotonic()
        if self._conn is None:
            if not self.book.held or now < self._next_connect or not self._open(now):
                return self.book.take_confirmed()
        try:
            transport = self._conn.connection
            amqp_frames.read_available(transport)  # confirms, returns, blocked
            blocked = self.blocked
            if blocked.is_blocked:
                self.book.restart_wait(now)
                if blocked.blocked_for() > BLOCKED_GIVE_UP * CONFIRM_TIMEOUT:
                    raise _GiveUp(f"blocked for {blocked.blocked_for():.0f}s "
                                  f"({blocked.reason})")
            else:
                for tag, copy in self.book.due(now)[:max(0, WINDOW - self.book.in_flight)]:
                    self._channel.basic_publish(
                        copy, exchange=self._topology.dead_letter_exchange,
                        routing_key=self._topology.queue, mandatory=True)
                    self.book.sent(tag)
                if self.book.stalled(now, CONFIRM_TIMEOUT):
                    raise _GiveUp(f"no confirm for {CONFIRM_TIMEOUT:.0f}s of "
                                  f"{self.book.in_flight} dead letters")
            if amqp_frames.writable(transport):  # a heartbeat never waits for room
                self._conn.heartbeat_check()
        except (_GiveUp, *_BROKER_ERRORS) as exc:
            self._drop(now, exc if isinstance(exc, _GiveUp) else broker.explain(exc))
        return self.book.take_confirmed()

    def release_held(self) -> int:
        """The consuming connection is gone and its held originals with it."""
        return self.book.release_all()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            broker.release(conn)  # without the close handshake while blocked
        self.book.connection_lost()
        self.down_since = None
        self._attempt = 0
        self._next_connect = 0.0

    # -- internals ------------------------------------------------------------------------
    def _open(self, now: float) -> bool:
        try:
            conn, connected_to = self._connector.connect()
        except broker.BrokerConnectError as exc:
            self._failed(now, str(exc))
            return False
        where = broker.describe(self._connector.settings, connected_to)
        try:
            channel = conn.channel()
            declare_dead_letters(channel, self._topology)
            channel.confirm_select()
        except _BROKER_ERRORS as exc:
            broker.release(conn)
            self._failed(now, f"{where}: {broker.explain(exc)}")
            return False
        channel.events["basic_ack"].add(
            lambda tag, multiple: self.book.acked(tag, multiple, time.monotonic()))
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._conn, self._channel, self._where = conn, channel, where
        self.down_since = None
        self._attempt = 0
        LOG.info("dead letters of %s publish on %s (a connection of their own); %d held",
                 self._topology.queue, where, self.book.held)
        return True

    def _drop(self, now: float, reason) -> None:
        conn, self._conn = self._conn, None
        self.book.connection_lost()
        if conn is not None:
            broker.release(conn)
        self._failed(now, f"{self._where}: {reason}")

    def _failed(self, now: float, reason: str) -> None:
        if self.down_since is None:
            self.down_since = now
        delay = backoff(self._attempt, self._retry_max)
        self._attempt += 1
        self._next_connect = now + delay
        LOG.warning("dead-letter connection unavailable (%s); %d dead letters held "
                    "unacked, retrying in %.1fs; other messages are applied meanwhile",
                    reason, self.book.held, delay)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        LOG.warning("%s refused dead letter(s) up to %d (nack); sent again with back-off",
                    self._where, tag)
        self.book.nacked(tag, multiple, time.monotonic())

    def _on_return(self, exc, exchange: str, routing_key: str, message) -> None:
        headers = message.properties.get("application_headers") or {}
        LOG.error("no queue is bound to the dead-letter exchange %s (%s): dead letter %s "
                  "kept, its original held, and sent again with back-off", exchange, exc,
                  headers.get(self._id_header))
        self.book.returned(headers.get(self._id_header, ""))


class _GiveUp(Exception):
    """This connection is given up for another."""
