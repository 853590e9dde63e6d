"""Reads the queue in batches; every message ends in an ack or a dead-letter.

Delivery guarantee: a message is acknowledged only after the transaction that applied
it committed, or after it was dead-lettered with its reason and the broker confirmed
that; a consumer that dies before then leaves it to be redelivered.

Two connections: one consumes and acks and never publishes, so a broker's resource
alarm never blocks it; dead letters go out on one of their own
(``DeadLetterPublisher``). Acks are selective (``settlement.Unacked``): a message
whose dead letter is not confirmed yet stays unacked while those after it are acked.

Deliveries are parsed from the broker's frames by ``amqp_deliveries.DeliveryReader``
(py-amqp handles every other frame; over TLS, every frame): a batch holds
``Delivery`` objects, or over TLS py-amqp's ``amqp.Message``, read the same way
(``body``, ``properties``, ``delivery_info``, ``delivery_tag``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
import uuid
from typing import Callable, Optional, Union

import amqp
import kombu
import kombu.exceptions

from lifecycle_common import amqp_frames, broker, timeutil
from lifecycle_common.amqp_deliveries import Delivery, DeliveryReader
from consumer.dead_letter_publisher import DeadLetterPublisher
from consumer.errors import BrokerUnavailable
from consumer.settlement import Unacked
from consumer.topology import Topology, declare

LOG = logging.getLogger(__name__)

# A message delivered: parsed from its frames here, or over TLS py-amqp's. Both have
# body, properties, delivery_info and delivery_tag.
Message = Union[Delivery, amqp.Message]

# Headers of a dead letter: why (a sentence, and a word for counting), when, and what
# the original said of itself; ``lifecycle-manage dlq`` reads them.
REASON_HEADER = "x-lifecycle-error"
CAUSE_HEADER = "x-lifecycle-cause"
DEAD_LETTERED_AT_HEADER = "x-lifecycle-dead-lettered-at"  # ISO 8601 UTC
DEAD_LETTER_ID_HEADER = "x-lifecycle-dead-letter-id"      # unique: message ids may repeat
ORIGINAL_USER_HEADER = "x-original-user-id"


class BatchQueue:
    """A consuming connection (consume and ack, never publish) and the dead letters'
    publishing connection (``dead_letters``), of one consumer."""

    def __init__(self, connector: broker.Connector, topology: Topology, batch_size: int,
                 linger: float, retry_max: float = 30.0, prefetch: Optional[int] = None,
                 wakeup=None):
        """``retry_max``: the longest back-off between attempts to publish a dead letter
        (refused) or to open the dead letters' connection. ``prefetch``: messages
        delivered and not yet acked, at most (default twice ``batch_size``).
        ``wakeup``: something with ``fileno()`` and ``is_set()`` (a ``Wakeup``) that
        ends a wait for a batch when set, as the broker's frames do (another thread's
        results to settle)."""
        self._connector = connector
        self.topology = topology
        self._batch_size = batch_size
        self._linger = linger
        self._prefetch = prefetch or batch_size * 2
        self._wakeup = wakeup
        self._wakeup_poll = None  # a poll object on the wakeup's pipe, made once
        self._conn: kombu.Connection | None = None
        self._buffer: list[Message] = []
        self._reader: DeliveryReader | None = None
        self._unacked = Unacked()
        self.dead_letters = DeadLetterPublisher(connector.settings, topology, retry_max,
                                                id_header=DEAD_LETTER_ID_HEADER)

    def connect(self) -> None:
        try:
            conn, connected_to = self._connector.connect()
        except broker.BrokerConnectError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        where = broker.describe(self._connector.settings, connected_to)
        self._buffer.clear()
        self._unacked.clear()
        try:
            self._channel = conn.channel()
            declare(self._channel, self.topology)
            self._channel.basic_qos(0, self._prefetch, False)
            consumer_tag = self._channel.basic_consume(self.topology.queue,
                                                       callback=self._delivered)
        except amqp.exceptions.PreconditionFailed as exc:
            broker.release(conn)
            LOG.error("%s: the queue %s (or its dead-letter queue) exists with other "
                      "arguments than these options declare (%s): delete it (and what it "
                      "holds) or set the options as it was declared; retrying meanwhile",
                      where, self.topology.queue, exc.reply_text)
            raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
        except (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError) as exc:
            broker.release(conn)
            raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
        self._conn = conn
        self._reader = DeliveryReader(conn.connection, self._channel.channel_id, consumer_tag,
                                      self._delivered)
        LOG.info("consuming %s on %s (exchange %s, key %s)", self.topology.queue,
                 where, self.topology.exchange, self.topology.routing_key)

    def close(self) -> None:
        """Close both connections; what is unacked (dead letters held included)
        returns to the queue."""
        conn, self._conn = self._conn, None
        self._reader = None
        if conn is not None:
            broker.release(conn)
        self._buffer.clear()
        self._unacked.clear()
        dropped = self.dead_letters.release_held()
        if dropped:
            LOG.warning("%d messages to dead-letter return to the queue unacked (their "
                        "dead letters were not confirmed)", dropped)
        self.dead_letters.close()

    def _delivered(self, message: Message) -> None:
        self._unacked.delivered(message.delivery_tag)
        self._buffer.append(message)

    def next_batch(self, timeout: float) -> list[Message]:
        """Up to batch_size messages: waits up to ``timeout`` for the first, then takes
        whatever the broker has already sent and whatever arrives within ``linger`` of
        the first: a batch never waits longer than that to fill. Deliveries are read
        by ``DeliveryReader`` (``Delivery``; over TLS, py-amqp's ``amqp.Message``)."""
        with _broker_errors():
            transport = self._conn.connection
            read_available = self._reader.read_available
            deadline = time.monotonic() + timeout
            while not self._buffer:
                self._settle_dead_letters()
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._woken():
                    self._conn.heartbeat_check()
                    return []
                if not self._wait(transport, min(remaining, 1.0)):
                    self._conn.heartbeat_check()
                read_available()
            linger_until = time.monotonic() + self._linger
            while len(self._buffer) < self._batch_size:
                if read_available():  # sent already, not awaited
                    continue
                remaining = linger_until - time.monotonic()
                if remaining <= 0 or not self._wait(transport, remaining, linger=True):
                    break
            batch = self._buffer[:self._batch_size]
            del self._buffer[:self._batch_size]
            return batch

    def _wait(self, transport, timeout: float, linger: bool = False) -> bool:
        """Sleep until the broker sends something on the consuming connection (or,
        unless lingering, on the dead letters' connection, or a dead letter is due),
        or ``timeout`` passes; returns whether something arrived."""
        if amqp_frames.readable(transport):  # (over TLS, bytes already decrypted)
            return True
        poller = select.poll()
        poller.register(transport.sock, select.POLLIN)
        if not linger:
            if self._wakeup is not None:
                poller.register(self._wakeup.fileno(), select.POLLIN)
            dl_sock = self.dead_letters.socket()
            if dl_sock is not None:
                poller.register(dl_sock, select.POLLIN)
            due = self.dead_letters.next_deadline()
            if due is not None:
                timeout = min(timeout, max(0.0, due - time.monotonic()))
        return bool(poller.poll(max(0, int(timeout * 1000 + 0.999))))

    def _woken(self) -> bool:
        """Whether the ``wakeup`` says to stop waiting: its flag set, or its pipe
        readable (a ``set`` that raced with a ``clear`` can leave the byte without the
        flag: waiting on it would return at once, again and again)."""
        wakeup = self._wakeup
        if wakeup is None:
            return False
        if wakeup.is_set():
            return True
        if self._wakeup_poll is None:
            self._wakeup_poll = select.poll()
            self._wakeup_poll.register(wakeup.fileno(), select.POLLIN)
        return bool(self._wakeup_poll.poll(0))

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge ``messages`` (all delivered on this connection): one multiple ack
        up to the first message still unacked (a dead letter held, say), one ack each
        after it."""
        self._ack_tags([m.delivery_tag for m in messages])

    def _ack_tags(self, tags: list[int]) -> None:
        if not tags:
            return
        with _broker_errors():
            for tag, multiple in self._unacked.acks(tags):
                self._channel.basic_ack(tag, multiple=multiple)

    def _settle_dead_letters(self) -> None:
        """Ack the originals whose dead letter the broker confirmed."""
        confirmed = self.dead_letters.pump()
        if confirmed:
            self._ack_tags([tag for tag, _ in confirmed])
            for _, on_done in confirmed:
                if on_done is not None:
                    on_done()

    def dead_letter(self, message: Message, reason: str, cause: str = "unreadable",
                    on_done: Optional[Callable[[], None]] = None) -> None:
        """Copy ``message`` to the dead-letter queue with ``reason`` (and ``cause``, its
        word) on the dead letters' own connection; the original stays unacked (held)
        until the broker confirms the copy, then is acked here and ``on_done`` called.
        While that connection is blocked or away the copy waits, and the caller goes
        on with other messages; the caller must not ack the original itself."""
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
        message_id = message.properties.get("message_id")

        def done() -> None:
            LOG.error("dead-lettered message %s to %s: %s", message_id,
                      self.topology.dead_letter_queue, reason)
            if on_done is not None:
                on_done()
        self.dead_letters.hold(message.delivery_tag, copy,
                               headers[DEAD_LETTER_ID_HEADER], done)
        self._settle_dead_letters()  # published now, unless its connection cannot take it

    def finish(self, timeout: float) -> None:
        """Before a clean stop: wait up to ``timeout`` seconds for the dead letters
        already published to be confirmed, and ack their originals; not while their
        connection is blocked (nothing can be confirmed then). What is still held
        returns to the queue when the connection closes."""
        deadline = time.monotonic() + timeout
        with _broker_errors():
            while True:
                self._settle_dead_letters()
                remaining = deadline - time.monotonic()
                dead_letters = self.dead_letters
                if (not dead_letters.book.in_flight or dead_letters.blocked.is_blocked
                        or dead_letters.socket() is None or remaining <= 0):
                    return
                poller = select.poll()
                poller.register(dead_letters.socket(), select.POLLIN)
                poller.poll(max(1, int(min(remaining, 0.2) * 1000)))

    def keepalive(self) -> None:
        """Service AMQP heartbeats and dead letters while the caller waits (e.g. for
        the database)."""
        with _broker_errors():
            self._conn.heartbeat_check()
            self._settle_dead_letters()


@contextlib.contextmanager
def _broker_errors():
    try:
        yield
    except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked,
            kombu.exceptions.KombuError) as exc:
        raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
