"""Publishes the outbox on the topic exchange: at least once, in outbox order.

Every row is published with the mandatory flag under publisher confirms and deleted
from the outbox only once the broker confirmed it and did not return it as unroutable;
after a lost connection, everything still in the outbox is published again. Up to
``window`` messages wait for their confirms at once, so throughput does not depend on
the round trip to the broker.

One thread owns the AMQP connection: py-amqp is not thread-safe. py-amqp connects,
reads the broker's frames (confirms, returns, heartbeats) and closes; the publishes
themselves are framed by amqp_frames and written in one system call per round.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, Optional

import amqp
import kombu

from lifecycle_common import amqp_read
from lifecycle_common.retry import backoff
from lifecycle_publisher.amqp_frames import PublishFramer
from lifecycle_publisher.errors import BrokerUnavailable
from lifecycle_publisher.outbox import Outbox, OutboxRow
from lifecycle_publisher.wakeup import Wakeup

LOG = logging.getLogger(__name__)

# Confirmed rows are deleted from the outbox in one transaction per half window under
# load, and otherwise at most this often: a delete per event would cost a SQLite
# transaction per event at low rates. A crash can therefore republish up to this much
# of confirmed events; consumers drop them as duplicates (host, epoch, seq).
DELETE_INTERVAL = 0.2


class Publisher:
    def __init__(self, outbox: Outbox, urls: list[str], exchange: str,
                 routing_keys: list[str], window: int, retry_max: float,
                 heartbeat: Callable[[], Optional[bytes]], heartbeat_interval: float,
                 wake: Wakeup):
        self._outbox = outbox
        self._urls = urls
        self._exchange = exchange
        self._routing_keys = routing_keys
        self._window = window
        self._retry_max = retry_max
        self._heartbeat = heartbeat
        self._heartbeat_interval = heartbeat_interval
        self._wake = wake
        self._refill = max(len(routing_keys), window // 4)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.confirmed = 0  # rows confirmed since start, for logs and benchmarks
        self._reset_session()

    # -- state of one connection ------------------------------------------------
    def _reset_session(self) -> None:
        self._inflight: collections.OrderedDict[int, Optional[int]] = collections.OrderedDict()
        self._remaining: dict[int, int] = {}     # row id -> confirms still awaited
        self._returned: set[int] = set()         # row ids the broker could not route
        self._done: list[int] = []               # confirmed row ids, to delete
        self._delete_at = 0.0                    # when to delete them at the latest
        self._out: list[bytes] = []              # framed publishes not yet written
        self._cursor = 0                         # last outbox row id sent
        self._more = True                        # the outbox may hold unsent rows
        self._next_heartbeat = 0.0
        self._farewell_sent = False              # the heartbeat saying "stopping"
        self._retry_at: dict[int, float] = {}    # unroutable row id -> when to retry
        self._delivery_tag = 0                   # the channel's last delivery tag
        self._unroutable_rounds = 0              # retries of unroutable rows in a row
        self.connected_once = False

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

    def drain(self, timeout: float) -> None:
        """Ask the publisher to send what the outbox holds and a last heartbeat, then
        stop once all is confirmed or ``timeout`` has passed; used at shutdown."""
        self._drain_deadline = time.monotonic() + timeout
        self._wake.set()

    _drain_deadline: Optional[float] = None

    def _session(self) -> None:
        self._reset_session()
        self.connected_once = False
        conn = kombu.Connection(self._urls, heartbeat=30, connect_timeout=5,
                                transport_options={"max_retries": 0})
        try:
            try:
                conn.connect()
                channel = conn.channel()
                channel.exchange_declare(self._exchange, "topic", durable=True,
                                         auto_delete=False)
                channel.confirm_select()
            except (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError) as exc:
                raise BrokerUnavailable(f"{conn.as_uri()}: {exc}") from exc
            framer = PublishFramer(channel.channel_id, self._exchange, conn.connection.frame_max)
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            LOG.info("connected to %s, publishing on exchange %s; %d events in the outbox",
                     conn.as_uri(), self._exchange, self._outbox.pending())
            self.connected_once = True
            self.connected.set()
            self._loop(conn, framer)
        finally:
            self.connected.clear()
            try:
                conn.release()
            except Exception:  # noqa: BLE001 - the connection is being discarded
                LOG.debug("closing the broker connection failed", exc_info=True)

    def _loop(self, conn: kombu.Connection, framer: PublishFramer) -> None:
        transport = conn.connection  # the py-amqp Connection
        while True:
            if self._drain_deadline is not None:
                settled = not self._inflight and not self._more and self._farewell_sent
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
                amqp_read.read_available(transport)  # confirms and returns
                conn.heartbeat_check()
            except (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError) as exc:
                self._flush_done()
                raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc
            if len(self._done) >= self._window // 2 or (
                    self._done and time.monotonic() >= self._delete_at):
                self._flush_done()

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_heartbeat] + list(self._retry_at.values())
        if self._done:
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
            self._next_heartbeat = now + self._heartbeat_interval
        if self._retry_at:
            due = [row_id for row_id, at in self._retry_at.items() if at <= now]
            if due:
                self._unroutable_rounds += 1
            for row in self._outbox.fetch_ids(due):
                self._publish_row(framer, row)
            for row_id in due:
                del self._retry_at[row_id]
        if self._wake.is_set():
            self._wake.clear()
            self._more = True
        room = self._window - len(self._inflight)
        # Refill by quarter windows under load (one outbox read each), at once when idle.
        wanted = len(self._routing_keys) if not self._inflight else self._refill
        if not self._more or room < wanted:
            return
        rows = self._outbox.fetch_after(self._cursor, room // len(self._routing_keys))
        for row in rows:
            self._publish_row(framer, row)
            self._cursor = row.id
        self._more = len(rows) == room // len(self._routing_keys)

    def _publish_row(self, framer: PublishFramer, row: OutboxRow) -> None:
        self._remaining[row.id] = len(self._routing_keys)
        for key in self._routing_keys:
            self._publish(framer, row.id, row.body, key, mandatory=True)

    def _publish(self, framer: PublishFramer, row_id: Optional[int], body: bytes,
                 routing_key: str, mandatory: bool) -> None:
        """Frame one persistent JSON message; the loop writes them all at once."""
        self._out.append(framer.publish(
            body, routing_key, mandatory,
            message_id=f"outbox-{row_id}" if row_id is not None else None))
        self._delivery_tag += 1
        self._inflight[self._delivery_tag] = row_id

    # -- broker callbacks, run inside drain_events on this thread ----------------
    def _settled(self, delivery_tag: int, multiple: bool) -> list[Optional[int]]:
        if not multiple:
            return [self._inflight.pop(delivery_tag, None)]
        rows = []
        while self._inflight:
            tag = next(iter(self._inflight))
            if tag > delivery_tag:
                break
            rows.append(self._inflight.pop(tag))
        return rows

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        for row_id in self._settled(delivery_tag, multiple):
            if row_id is None or row_id not in self._remaining:
                continue
            self._remaining[row_id] -= 1
            if self._remaining[row_id] == 0:
                del self._remaining[row_id]
                if row_id in self._returned:
                    self._returned.discard(row_id)
                    self._retry_at[row_id] = time.monotonic() + backoff(
                        self._unroutable_rounds, self._retry_max)
                else:
                    if not self._done:
                        self._delete_at = time.monotonic() + DELETE_INTERVAL
                    self._done.append(row_id)
                    self.confirmed += 1
                    self._unroutable_rounds = 0

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for row_id in self._settled(delivery_tag, multiple):
            if row_id is not None and self._remaining.pop(row_id, None) is not None:
                LOG.warning("broker refused outbox row %d (nack); retrying", row_id)
                self._returned.discard(row_id)
                self._retry_at[row_id] = time.monotonic() + backoff(0, self._retry_max)

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        message_id = message.properties.get("message_id") or ""
        if message_id.startswith("outbox-"):
            row_id = int(message_id[len("outbox-"):])
            if not self._returned and not self._retry_at:
                LOG.error("no queue is bound to exchange %s for routing key %s (%s): events "
                          "stay in the outbox and are retried with back-off",
                          exchange, routing_key, exc)
            self._returned.add(row_id)

    def _flush_done(self) -> None:
        if self._done:
            self._outbox.delete(self._done)
            self._done = []
