"""Publishes the outbox on the topic exchange: at least once, in outbox order.

Every row is published on each routing key with the mandatory flag under publisher
confirms, and deleted from the outbox only once the broker confirmed it on each key
and did not return it as unroutable; after a lost connection, whatever is still owed
is published again. Up to ``window`` messages wait for their confirms at once, so
throughput does not depend on the round trip to the broker. Every message carries the
AMQP ``user_id`` of the user the agent logged in as, which RabbitMQ checks: a consumer
can then tell which broker user spoke for which host.

One thread owns the AMQP connection: py-amqp is not thread-safe. In the agent it is
also the thread that writes the outbox: each turn of the loop first steps the outbox
writer (its ``source``: what libvirt's callback handed over is translated and written,
one transaction), then sends the rows just written from memory, without reading them
back, while nothing older waits in the outbox (the outbox is read otherwise: after a
reconnection, while blocked, past ``FRESH_MAX``). One thread, one ``poll`` over the
broker's socket and the inbox's wake-up: an event costs one cross-thread wake-up (the
callback's) instead of two, and no outbox read. The loop never waits on the socket to
send, and a connection is opened on a thread of its own while the writer goes on, so a
stalled broker never holds up the outbox. ``broker.Connector`` opens the connection
(TLS, login method, failover); py-amqp reads the broker's frames (confirms,
returns, heartbeats, ``connection.blocked``); the publishes themselves are framed by
``amqp_frames`` and written in one system call per round, without waiting: what the
socket does not take is written when it has room, and a broker that takes nothing of
it for ``confirm_timeout`` is given up like one that does not confirm. What was sent
and confirmed is kept by ``ConfirmLedger``, a pure object; this module is the loop
around the socket.

While the broker blocks the connection (a memory or disk alarm: RabbitMQ reads nothing
more of it), nothing more is published; events wait in the outbox, the loop goes on
reading the broker's frames, and the time blocked does not count against
``confirm_timeout`` (the broker said why it does not confirm, and an alarm blocks
publishers on every node of a cluster, so moving would not help). A connection blocked
for ``BLOCKED_GIVE_UP`` times ``confirm_timeout`` is given up all the same, in case the
next broker of ``transport_url`` is not of the same cluster. A stop while blocked does
not wait for confirms that cannot come.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Callable, Optional, Protocol

import amqp
import kombu
import kombu.exceptions

from lifecycle_common import amqp_frames, broker, health
from lifecycle_common.amqp_frames import PublishFramer
from lifecycle_common.retry import backoff
from lifecycle_common.threads import named_thread
from lifecycle_publisher.confirms import ConfirmLedger
from lifecycle_publisher.errors import BrokerUnavailable, OutboxUnwritable
from lifecycle_publisher.outbox import Outbox
from lifecycle_publisher.outbox_writer import Written
from lifecycle_publisher.wakeup import Wakeup

LOG = logging.getLogger(__name__)

# Confirmed rows are deleted from the outbox in one transaction per half window under
# load, and otherwise this long after the first of them was sent (when their confirms
# are read, if the window had room: see Publisher._wants_frames): a delete per event
# would cost a SQLite transaction per event at low rates. A crash can therefore
# republish up to this much of confirmed events; consumers drop them as duplicates
# (host, epoch, seq).
DELETE_INTERVAL = 0.2

_BROKER_ERRORS = (OSError, amqp.exceptions.AMQPError, kombu.exceptions.KombuError)

# A connection blocked this many times confirm_timeout (5 minutes by default) is given
# up for the next broker: nodes of one cluster block together, so this is for a
# transport_url that lists brokers of more than one cluster, or a node whose alarm never
# clears. Moving costs a reconnection and the window sent again.
BLOCKED_GIVE_UP = 10

# Rows written and kept in memory for the next send, at most; past it (the broker is
# slower than the writer), they are read from the outbox in their turn instead.
FRESH_MAX = 4096

HEARTBEAT_TICK = 1.0  # seconds between py-amqp's heartbeat checks, at most


class RowSource(Protocol):
    """What feeds the publisher's loop: the outbox writer (``OutboxWriter``)."""

    def step(self) -> Written: ...
    def deadline(self) -> Optional[float]: ...
    def write_rest(self) -> None: ...


class Publisher:
    def __init__(self, outbox: Outbox, connector: broker.Connector, exchange: str,
                 routing_keys: list[str], window: int, retry_max: float,
                 heartbeat: Callable[[], Optional[bytes]], heartbeat_interval: float,
                 wake: Wakeup, user_id: Optional[str] = None, confirm_timeout: float = 30.0,
                 source: Optional[RowSource] = None,
                 on_source_error: Callable[[BaseException], None] = lambda exc: None):
        """``user_id``: the user to stamp on every message; None: the user each
        connection logged in as (``BrokerSettings.login_user``).

        ``source``: the outbox writer, stepped on this thread at every turn of the loop
        (``wake`` is then the inbox's: set for each batch of events handed over), whose
        rows are sent as written, without reading them back. None: another thread
        writes the outbox and sets ``wake`` after each commit. A source that raises
        (a corrupt outbox, a defect) is stepped no more: ``on_source_error`` is told
        (it must only record it and wake the agent, which stops), a heartbeat goes at
        once (saying "degraded"), and the publisher goes on with what the outbox holds
        until it is stopped."""
        self._source = source
        self._on_source_error = on_source_error
        self._source_done = source is None  # its STOP reached: all before it written
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
        self._shutdown_asked = threading.Event()  # stop or drain: ends a back-off wait
        self.connected = threading.Event()
        self.connected_once = False
        self.heartbeats_sent = 0  # since start (not confirmed: they are not kept)
        self.sessions = 0         # connections made since start (reconnects: one less)
        self.broker = health.Outage(down_since=time.monotonic())  # for the health check
        # Its connections fail a blocking write (py-amqp's own, or a publish over TLS)
        # that the broker takes nothing of for confirm_timeout, as a silent broker is.
        connector.write_timeout = confirm_timeout
        connector.blocked.role = "publishing connection"
        self.blocked = connector.blocked  # connection.blocked, for health and metrics
        self._drain_deadline: Optional[float] = None
        self._where = ""
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
        self._settle_at: Optional[float] = None  # when to read confirms and delete, at the latest
        self._tick_at = 0.0                      # when py-amqp's heartbeat check is due
        self._out: list[bytes] = []              # framed publishes not yet written
        self._unwritten = b""                    # what the socket has not taken yet
        self._waiting_to_write_since = 0.0       # when the socket last took something
        self._nacks_at_start = self.ledger.nacks
        self._cursor = 0                         # last outbox row id sent
        self._more = True                        # the outbox may hold unsent rows
        self._fresh: list[tuple[int, bytes]] = []  # written since, not sent: (id, body)
        self._next_heartbeat = 0.0
        self._farewell_sent = False              # the heartbeat saying "stopping"

    def run(self) -> None:
        """Thread body: connect, publish, reconnect with back-off, until stopped."""
        try:
            self._run()
            if not self._source_done:
                self._source.write_rest()  # a stop that did not wait for the writes
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
                self._pause(delay)
                if self._drain_deadline is not None:
                    LOG.warning("stopping without a broker connection; %d events stay in "
                                "the outbox for the next start", self._outbox.pending())
                    return

    def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if asked to stop or drain; the source goes on
        writing the outbox meanwhile."""
        until = time.monotonic() + delay
        while not self._shutdown_asked.is_set():
            now = time.monotonic()
            if now >= until:
                return
            self._wake.wait(self._source_timeout(until - now))
            self._wake.clear()
            self._feed()

    def _source_timeout(self, longest: float) -> float:
        deadline = self._source.deadline() if self._source is not None else None
        if deadline is None:
            return longest
        return max(0.0, min(longest, deadline - time.monotonic()))

    def _feed(self) -> None:
        """Step the source: write what the inbox holds, and keep the rows written for
        the next send while the outbox holds nothing else unsent (else they are read
        from the outbox in their turn)."""
        if self._source_done:
            return
        try:
            written = self._source.step()
        except Exception as exc:  # noqa: BLE001 - the agent is told, and stops
            self._source_done = True  # nothing more is written: a drain does not wait
            self._on_source_error(exc)
            self.heartbeat_now()
            return
        if written.stopped:
            self._source_done = True
        rows = written.rows
        if rows is None:  # their keys unknown: read from the outbox
            self._fresh.clear()
            self._more = True
        elif rows:
            if self._more or len(self._fresh) + len(rows) > FRESH_MAX:
                self._fresh.clear()  # the outbox has them: read in order, in their turn
                self._more = True
            else:
                self._fresh += rows

    def stop(self) -> None:
        """Stop now, leaving whatever is unconfirmed in the outbox."""
        self._stop.set()
        self._shutdown_asked.set()
        self._wake.set()

    def heartbeat_now(self) -> None:
        """Send a heartbeat at the next turn (the agent's status changed); any thread."""
        self._next_heartbeat = 0.0
        self._wake.set()

    def drain(self, timeout: float) -> None:
        """Ask the publisher to send what the outbox holds and a last heartbeat, then
        stop once all is confirmed, or at once while the broker blocks the connection,
        and within ``timeout`` seconds, closing the connection included; used at
        shutdown."""
        self._drain_deadline = time.monotonic() + max(0.0, timeout - broker.CLOSE_TIMEOUT)
        self._shutdown_asked.set()
        self._wake.set()

    def _session(self) -> None:
        self._reset_session()
        self.connected_once = False
        conn, connected_to, channel = self._open()
        where = self._where = broker.describe(self._connector.settings, connected_to)
        try:
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
            # A frame left half written: the broker could not read a close after it.
            broker.release(conn, handshake=not self._unwritten)

    def _open(self) -> tuple[kombu.Connection, object, object]:
        """A connection, its channel in confirm mode and the exchange declared: on a
        thread of its own (``broker-connect``) when there is a source, so that the
        outbox goes on being written while a broker takes its time to answer (up to
        the connect timeout, then the handshake); BrokerUnavailable if it fails, or if
        a stop (or a drain past its deadline, with everything written) comes first: the
        attempt is then left to end on its own thread, which closes what it opened."""
        if self._source is None:
            return self._connect()
        outcome: dict = {}
        lock = threading.Lock()  # "opened" and "abandoned": one or the other wins

        def attempt() -> None:
            try:
                opened = self._connect()
                with lock:
                    if "abandoned" not in outcome:
                        outcome["opened"] = opened
                        return
                broker.release(opened[0])
            except BaseException as exc:  # noqa: BLE001 - raised on this thread below
                outcome["error"] = exc
            finally:
                outcome["done"] = True
                self._wake.set()
        named_thread(attempt, "broker-connect", daemon=True).start()
        while "done" not in outcome:
            self._wake.wait(self._source_timeout(1.0))
            self._wake.clear()
            self._feed()
            if self._stop.is_set() or (self._drain_deadline is not None and self._source_done
                                       and time.monotonic() > self._drain_deadline):
                with lock:
                    if "opened" not in outcome:
                        outcome["abandoned"] = True
                        raise BrokerUnavailable("stopping while a connection attempt was "
                                                "under way")
                break
        if "error" in outcome:
            raise outcome["error"]
        return outcome["opened"]

    def _connect(self) -> tuple[kombu.Connection, object, object]:
        try:
            conn, connected_to = self._connector.connect()
        except broker.BrokerConnectError as exc:
            raise BrokerUnavailable(str(exc)) from exc
        where = broker.describe(self._connector.settings, connected_to)
        try:
            channel = conn.channel()
            _declare_exchange(channel, self._exchange)
            channel.confirm_select()
        except _BROKER_ERRORS as exc:
            broker.release(conn)
            raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
        except BaseException:
            broker.release(conn)
            raise
        return conn, connected_to, channel

    def _loop(self, conn: kombu.Connection, framer: PublishFramer, where: str) -> None:
        transport = conn.connection  # the py-amqp Connection
        blocked = self.blocked
        # py-amqp asks for its heartbeat check "on the order of once per second"; a
        # check every turn cost a poll and 2 us of Python per event at low rates.
        heartbeat_tick = min(HEARTBEAT_TICK, (transport.heartbeat or HEARTBEAT_TICK) / 4)
        while True:
            if self._source is not None:
                self._wake.clear()  # before the inbox is looked at: a later put wakes again
                self._feed()
            if self._drain_deadline is not None:
                settled = (self._source_done and not self.ledger.in_flight and not self._more
                           and not self._fresh and self._farewell_sent and not self._unwritten)
                if settled or blocked.is_blocked or time.monotonic() > self._drain_deadline:
                    if blocked.is_blocked and not settled:
                        LOG.warning("stopping while %s blocks the connection (%s): %d "
                                    "messages unconfirmed stay in the outbox", where,
                                    blocked.reason, self.ledger.in_flight)
                    self._flush_done()
                    return
            elif self._stop.is_set():
                return
            try:
                if blocked.is_blocked:
                    self._hold()
                else:
                    self._send(framer)
                self._write(transport)
                if self._settle_at is None and (self.ledger.in_flight or self.ledger.done_count):
                    self._settle_at = time.monotonic() + DELETE_INTERVAL
                self._wait(transport)
                if self._reads_now():
                    amqp_frames.read_available(transport)  # confirms, returns, blocked
                if time.monotonic() >= self._tick_at:  # py-amqp's heartbeats, ~1/s
                    self._tick_at = time.monotonic() + heartbeat_tick
                    if not self._unwritten and amqp_frames.writable(transport):
                        conn.heartbeat_check()  # (a heartbeat frame never waits for room)
            except _BROKER_ERRORS as exc:
                self._flush_done()
                raise BrokerUnavailable(f"{where}: {broker.explain(exc)}") from exc
            now = time.monotonic()
            if blocked.is_blocked:
                # Nothing can be confirmed or written meanwhile: the waits start over.
                self.ledger.restart_wait(now)
                self._waiting_to_write_since = now
                if blocked.blocked_for() > BLOCKED_GIVE_UP * self._confirm_timeout:
                    self._flush_done()
                    raise BrokerUnavailable(
                        f"{where}: blocked for {blocked.blocked_for():.0f}s "
                        f"({blocked.reason}); giving up on this connection to try the "
                        "next broker")
            else:
                self._check_progress(where, now)
            if self.ledger.done_count >= self._window // 2:
                self._flush_done()
            elif self._settle_at is not None and now >= self._settle_at:
                self._flush_done()
                self._settle_at = now + DELETE_INTERVAL if self.ledger.in_flight else None

    def _check_progress(self, where: str, now: float) -> None:
        """BrokerUnavailable if the broker has taken nothing written, confirmed nothing
        sent, or nacked everything, for confirm_timeout."""
        timeout = self._confirm_timeout
        if self._unwritten and now - self._waiting_to_write_since > timeout:
            self._flush_done()
            raise BrokerUnavailable(
                f"{where}: the broker took none of the {len(self._unwritten)} bytes waiting "
                f"to be written for {timeout:.0f}s; giving up on this connection")
        if not self.ledger.stalled(now, timeout):
            return
        self._flush_done()
        if self.ledger.nacking_since is not None:
            raise BrokerUnavailable(
                f"{where}: nacked everything for {timeout:.0f}s "
                f"({self.ledger.nacks - self._nacks_at_start} nacks on this connection, "
                "no ack); giving up on this connection for the next broker")
        raise BrokerUnavailable(
            f"{where}: no confirm for {timeout:.0f}s of {self.ledger.in_flight} messages "
            "sent (a node without its cluster's majority?); giving up on this connection")

    def _hold(self) -> None:
        """While blocked: rows the writer commits wait in the outbox (read once the
        broker unblocks); the wake-up it sent is taken so as not to spin."""
        if self._source is not None:
            self._fresh.clear()  # sent from the outbox once unblocked
            self._more = True
        elif self._wake.is_set():
            self._wake.clear()
            self._more = True

    def _write(self, transport) -> None:
        """Write what was framed, as much as the socket takes now; the rest waits
        for room (never written past by anything else: frames stay whole)."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            if not self._unwritten:
                self._waiting_to_write_since = time.monotonic()
            self._unwritten += data
        if self._unwritten:
            written = amqp_frames.send_available(transport, self._unwritten)
            if written:
                self._waiting_to_write_since = time.monotonic()
                self._unwritten = self._unwritten[written:]

    def _wait(self, transport) -> None:
        """Sleep until the broker sends something (confirms), the socket has room for
        what waits to be written, the writer commits new rows, or a stop, whichever
        comes first: no polling."""
        if not self._unwritten:
            self._wake.wait(self._idle_timeout(),
                            also=transport.sock if self._wants_frames() else None)
            return
        if self._wake.is_set():
            return
        poller = select.poll()
        poller.register(self._wake.fileno(), select.POLLIN)
        poller.register(transport.sock, select.POLLIN | select.POLLOUT)
        poller.poll(int(self._idle_timeout() * 1000))

    def _wants_frames(self) -> bool:
        """Whether to wake for the broker's frames as they come. Not while the window
        has room, with a source: the confirms are read at the next turn anyway, which
        the next event or ``_settle_at`` (``DELETE_INTERVAL`` after the send, when the
        confirmed rows are deleted) brings. At a few events a second that saves a
        wake-up per event (the confirm's, 20 to 36 us of CPU each here, and more than
        the reading itself); what a confirm settles waits for the delete anyway, and a
        frame that matters sooner (a close, ``connection.blocked``) is read within
        that interval too, or the idle second."""
        return (self._source is None or self._drain_deadline is not None
                or self.blocked.is_blocked or self.ledger.room < self._window // 2
                or self._stop.is_set())

    def _reads_now(self) -> bool:
        """Whether to read the broker's frames at this turn: whenever they are waited
        for (``_wants_frames``), and otherwise when the confirms are to be settled or
        py-amqp's heartbeat check is due (at least once a second), not at every event:
        a read that finds one confirm costs a system call and the confirm's handling,
        ten confirms read at once cost about the same."""
        if self._wants_frames() or self._unwritten:
            return True
        now = time.monotonic()
        return now >= self._tick_at or (self._settle_at is not None and now >= self._settle_at)

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        if self.blocked.is_blocked:  # nothing is sent: no heartbeat or retry is due
            return self._source_timeout(1.0)
        deadlines = [self._next_heartbeat]
        if self._source is not None and (deadline := self._source.deadline()) is not None:
            deadlines.append(deadline)
        next_retry = self.ledger.next_retry()
        if next_retry is not None:
            deadlines.append(next_retry)
        if self._settle_at is not None:
            deadlines.append(self._settle_at)
        deadlines.append(self._tick_at)
        return max(0.0, min(min(deadlines) - now, 1.0))

    def _send(self, framer: PublishFramer) -> None:
        now = time.monotonic()
        # The farewell once everything before the stop is written: it is the last word.
        farewell = (self._drain_deadline is not None and not self._farewell_sent
                    and self._source_done)
        if farewell or now >= self._next_heartbeat:
            self._farewell_sent = self._drain_deadline is not None and self._source_done
            body = self._heartbeat()
            for key in self._routing_keys if body is not None else ():
                self._publish(framer, None, body, key, mandatory=False)
            self.heartbeats_sent += body is not None
            self._next_heartbeat = now + self._heartbeat_interval
        due = dict(self.ledger.due(now)) if self.ledger.retrying else None
        if due:
            rows = self._outbox.fetch_ids(list(due))
            for row in rows:
                for key in due[row.id]:
                    self._publish(framer, row.id, row.body, key, mandatory=True)
            self.ledger.forget(set(due) - {row.id for row in rows})
        if self._source is None and self._wake.is_set():
            self._wake.clear()
            self._more = True
        keys = len(self._routing_keys)
        room = self.ledger.room
        # Refill by quarter windows under load (one outbox read each), at once when idle.
        wanted = keys if not self.ledger.in_flight else self._refill
        if not (self._more or self._fresh) or room < wanted:
            return
        count = room // keys
        if self._more:  # (nothing is fresh then)
            rows = [(row.id, row.body) for row in self._outbox.fetch_after(self._cursor, count)]
            self._more = len(rows) == count
        else:
            rows, self._fresh = self._fresh[:count], self._fresh[count:]
        for row_id, body in rows:
            self._publish_row(framer, row_id, body)
            self._cursor = row_id

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
        self.ledger.acked(delivery_tag, multiple, time.monotonic())

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        first = self.ledger.nacking_since is None
        step = self.ledger.next_nack_retry_step()
        refused = self.ledger.nacked(delivery_tag, multiple, time.monotonic())
        if refused:
            # Said once per run of nacks; a node that refuses everything would
            # otherwise write a line per message.
            LOG.log(logging.WARNING if first else logging.DEBUG,
                    "%s refused outbox row(s) %s (nack); sent again with back-off (step "
                    "%d); if it acks nothing for %.0fs the agent moves to the next broker",
                    self._where, ", ".join(f"{d.row_id} on {d.routing_key}" for d in refused[:5])
                    + (f" and {len(refused) - 5} more" if len(refused) > 5 else ""),
                    step, self._confirm_timeout)

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        message_id = message.properties.get("message_id") or ""
        if message_id.startswith("outbox-"):
            row_id = int(message_id[len("outbox-"):])
            if self.ledger.returned(row_id, routing_key):
                LOG.error("no queue is bound to exchange %s for routing key %s (%s): events "
                          "stay in the outbox and are retried on that key with back-off",
                          exchange, routing_key, exc)

    def _flush_done(self) -> None:
        """Delete the confirmed rows from the outbox. A disk that refuses the delete (a
        full disk) does not stop the publisher: the outbox holds the ids and deletes
        them later (``Outbox.delete``, retried every second by its Checkpointer, which
        logs it); a crash meanwhile only republishes rows that consumers drop as
        duplicates."""
        done = self.ledger.take_done()
        if done:
            try:
                self._outbox.delete(done)
            except OutboxUnwritable as exc:
                LOG.debug("delete of %d confirmed rows held: %s", len(done), exc)


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
