"""Publishes the outbox on the topic exchange: at least once, in outbox order.

Every row is published on each routing key with the mandatory flag under publisher
confirms, and deleted from the outbox only once the broker confirmed it on each key
and did not return it as unroutable; after a lost connection, whatever is still owed
is published again. Up to ``window`` messages wait for their confirms at once, so
throughput does not depend on the round trip to the broker. Every message carries the
AMQP ``user_id`` of the user the agent logged in as, which RabbitMQ checks: a consumer
can then tell which broker user spoke for which host.

One thread owns the AMQP connection: py-amqp is not thread-safe. ``broker.Connector``
opens it (TLS, login method, failover); py-amqp reads the broker's frames (confirms,
returns, heartbeats); the publishes themselves are framed by ``amqp_frames`` and
written in one system call per round. What was sent and confirmed is kept by
``ConfirmLedger``, a pure object; this module is the loop around the socket.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import amqp
import kombu
import kombu.exceptions

from lifecycle_common import amqp_frames, broker, health
from lifecycle_common.amqp_frames import PublishFramer
from lifecycle_common.retry import backoff
from lifecycle_publisher.confirms import ConfirmLedger
from lifecycle_publisher.errors import BrokerUnavailable
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.wakeup import Wakeup

LOG = logging.getLogger(__name__)

# Confirmed rows are deleted from the outbox in one transaction per half window under
# load, and otherwise at most this often: a delete per event would cost a SQLite
# transaction per event at low rates. A crash can therefore republish up to this much
# of confirmed events; consumers drop them as duplicates (host, epoch, seq).
DELETE_INTERVAL = 0.2

_BROKER_ERRORS = (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError)


class Publisher:
    def __init__(self, outbox: Outbox, connector: broker.Connector, exchange: str,
                 routing_keys: list[str], window: int, retry_max: float,
                 heartbeat: Callable[[], Optional[bytes]], heartbeat_interval: float,
                 wake: Wakeup, user_id: Optional[str] = None, confirm_timeout: float = 30.0):
        """``user_id``: the user to stamp on every message; None: the user each
        connection logged in as (``BrokerSettings.login_user``)."""
        self._outbox = outbox
        self._connector = connector
        self._exchange = exchange
        self._routing_keys = routing_keys
        self._window = window
        self._retry_max = retry_max
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self._wake = wake
        self._user_id = user_id
        self._confirm_timeout = confirm_timeout
        self._refill = max(len(routing_keys), window // 4)
        self.ledger = ConfirmLedger(routing_keys, window, retry_max)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.connected_once = False
        self.heartbeats_sent = 0  # since start (not confirmed: they are not kept)
        self.sessions = 0         # connections made since start (reconnects: one less)
        self.broker = health.Outage(down_since=time.monotonic())  # for the health check
        self._drain_deadline: Optional[float] = None
        self._reset_session()

    @property
    def confirmed(self) -> int:
        """Rows confirmed since start, for logs and benchmarks."""
        return self.ledger.confirmed

    @property
    def in_flight(self) -> int:
        """Messages sent and not confirmed yet."""
        return self.ledger.in_flight

    # -- state of one connection ------------------------------------------------
    def _reset_session(self) -> None:
        self.ledger.connection_lost()
        self._delete_at = 0.0                    # when to delete confirmed rows at the latest
        self._out: list[bytes] = []              # framed publishes not yet written
        self._cursor = 0                         # last outbox row id sent
        self._more = True                        # the outbox may hold unsent rows
        self._next_heartbeat = 0.0
        self._farewell_sent = False              # the heartbeat saying "stopping"

    def run(self) -> None:
        """Thread body: connect, publish, reconnect with back-off, until stopped."""
        try:
            self._run()
        finally:
            self._outbox.close()  # this thread's connection

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._session()
                return
            except BrokerUnavailable as exc:
                if self._drain_deadline is not None:
                    LOG.warning("broker unavailable at shutdown (%s); %d events stay in "
                                "the outbox for the next start", exc, self._outbox.pending())
                    return
                attempt = 0 if self.connected_once else attempt + 1
                delay = backoff(attempt, self._retry_max)
                LOG.warning("broker unavailable (%s); %d events wait in the outbox; "
                            "retrying in %.1fs", exc, self._outbox.pending(), delay)
                self._stop.wait(delay)

    def stop(self) -> None:
        """Stop now, leaving whatever is unconfirmed in the outbox."""
        self._stop.set()
        self._wake.set()

    def heartbeat_now(self) -> None:
        """Send a heartbeat at the next turn (the agent's status changed); any thread."""
        self._next_heartbeat = 0.0
        self._wake.set()

    def drain(self, timeout: float) -> None:
        """Ask the publisher to send what the outbox holds and a last heartbeat, then
        stop once all is confirmed or ``timeout`` has passed; used at shutdown."""
        self._drain_deadline = time.monotonic() + timeout
        self._wake.set()

    def _session(self) -> None:
        self._reset_session()
        self.connected_once = False
        try:
            conn, connected_to = self._connector.connect()
        except broker.BrokerConnectError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        where = broker.describe(self._connector.settings, connected_to)
        try:
            try:
                channel = conn.channel()
                _declare_exchange(channel, self._exchange)
                channel.confirm_select()
            except _BROKER_ERRORS as exc:
                raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
            user_id = self._user_id or self._connector.settings.login_user(connected_to)
            framer = PublishFramer(channel.channel_id, self._exchange,
                                   conn.connection.frame_max, user_id=user_id)
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            LOG.info("connected to %s as %s, publishing on exchange %s; %d events in the "
                     "outbox", where, user_id, self._exchange, self._outbox.pending())
            self.connected_once = True
            self.sessions += 1
            self.broker.up()
            self.connected.set()
            self._loop(conn, framer, where)
        finally:
            self.connected.clear()
            if not self._stop.is_set():
                self.broker.down(time.monotonic())
            broker.release(conn)

    def _loop(self, conn: kombu.Connection, framer: PublishFramer, where: str) -> None:
        transport = conn.connection  # the py-amqp Connection
        while True:
            if self._drain_deadline is not None:
                settled = not self.ledger.in_flight and not self._more and self._farewell_sent
                if settled or time.monotonic() > self._drain_deadline:
                    self._flush_done()
                    return
            elif self._stop.is_set():
                return
            try:
                self._send(framer)
                if self._out:
                    transport.transport.write(b"".join(self._out))
                    self._out.clear()
                # Sleep until the broker sends something (confirms) or the writer
                # commits new rows, whichever comes first: no polling.
                self._wake.wait(self._idle_timeout(), also=transport.sock)
                amqp_frames.read_available(transport)  # confirms and returns
                conn.heartbeat_check()
            except _BROKER_ERRORS as exc:
                self._flush_done()
                raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
            if self.ledger.stalled(time.monotonic(), self._confirm_timeout):
                self._flush_done()
                raise BrokerUnavailable(
                    f"{where}: no confirm for {self._confirm_timeout:.0f}s of "
                    f"{self.ledger.in_flight} messages sent (a node without its cluster's "
                    "majority?); giving up on this connection")
            if self.ledger.done_count >= self._window // 2 or (
                    self.ledger.done_count and time.monotonic() >= self._delete_at):
                self._flush_done()

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat]
        next_retry = self.ledger.next_retry()
        if next_retry is not None:
            deadlines.append(next_retry)
        if self.ledger.done_count:
            deadlines.append(self._delete_at)
        return max(0.0, min(min(deadlines) - now, 1.0))

    def _send(self, framer: PublishFramer) -> None:
        now = time.monotonic()
        farewell = self._drain_deadline is not None and not self._farewell_sent
        if farewell or now >= self._next_heartbeat:
            self._farewell_sent = self._drain_deadline is not None
            body = self._heartbeat()
            for key in self._routing_keys if body is not None else ():
                self._publish(framer, None, body, key, mandatory=False)
            self.heartbeats_sent += body is not None
            self._next_heartbeat = now + self._heartbeat_interval
        due = dict(self.ledger.due(now))
        if due:
            rows = self._outbox.fetch_ids(list(due))
            for row in rows:
                for key in due[row.id]:
                    self._publish(framer, row.id, row.body, key, mandatory=True)
            self.ledger.forget(set(due) - {row.id for row in rows})
        if self._wake.is_set():
            self._wake.clear()
            self._more = True
        keys = len(self._routing_keys)
        room = self.ledger.room
        # Refill by quarter windows under load (one outbox read each), at once when idle.
        wanted = keys if not self.ledger.in_flight else self._refill
        if not self._more or room < wanted:
            return
        rows = self._outbox.fetch_after(self._cursor, room // keys)
        for row in rows:
            self._publish_row(framer, row.id, row.body)
            self._cursor = row.id
        self._more = len(rows) == room // keys

    def _publish_row(self, framer: PublishFramer, row_id: int, body: bytes) -> None:
        for key in self.ledger.keys_for(row_id):
            self._publish(framer, row_id, body, key, mandatory=True)

    def _publish(self, framer: PublishFramer, row_id: Optional[int], body: bytes,
                 routing_key: str, mandatory: bool) -> None:
        """Frame one persistent JSON message; the loop writes them all at once."""
        self._out.append(framer.publish(
            body, routing_key, mandatory,
            message_id=f"outbox-{row_id}" if row_id is not None else None))
        self.ledger.sent(row_id, routing_key)

    # -- broker callbacks, run inside read_available on this thread ---------------
    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if not self.ledger.done_count:
            self._delete_at = time.monotonic() + DELETE_INTERVAL
        self.ledger.acked(delivery_tag, multiple, time.monotonic())

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for delivery in self.ledger.nacked(delivery_tag, multiple, time.monotonic()):
            LOG.warning("broker refused outbox row %d on %s (nack); retrying",
                        delivery.row_id, delivery.routing_key)

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        message_id = message.properties.get("message_id") or ""
        if message_id.startswith("outbox-"):
            row_id = int(message_id[len("outbox-"):])
            if self.ledger.returned(row_id, routing_key):
                LOG.error("no queue is bound to exchange %s for routing key %s (%s): events "
                          "stay in the outbox and are retried on that key with back-off",
                          exchange, routing_key, exc)

    def _flush_done(self) -> None:
        done = self.ledger.take_done()
        if done:
            self._outbox.delete(done)


def _declare_exchange(channel, exchange: str) -> None:
    """Make sure the exchange exists. A passive declare needs no permission, so an
    agent whose broker user may only write to the exchange (the least it needs) works
    once the exchange exists; only when it does not is it declared, which needs the
    configure permission."""
    try:
        channel.exchange_declare(exchange, "topic", passive=True)
    except amqp.exceptions.NotFound:
        # A failed passive declare closes the channel; py-amqp opens it again in place.
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
