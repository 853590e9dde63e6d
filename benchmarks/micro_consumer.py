"""CPU per message of the consumer's own steps, without a broker or a database: reading
a delivery out of the frames the broker sent, admitting it (decode, schema check,
publisher identity), and settling a batch in the service. Each step is timed the way
it was (py-amqp's frame handler, ``wire.decode``) and the way it is now
(``DeliveryReader``, ``compiled_decode``), on the same bytes.

    python -m benchmarks.micro_consumer [--batch 100] [--repeat 7]
    python -m benchmarks.micro_consumer --through-broker 20000 [--transport-url URL]

Prints one line per step: microseconds per message, the best of ``repeat`` runs
(the least disturbed by other processes on the machine).

``--through-broker N``: N events put on a queue of the machine's RabbitMQ, then read and
settled by the consumer's own loop (``BatchQueue.next_batch`` and
``ConsumerService.handle_batch``) around a store that applies nothing: the consumer's
CPU per event but the database's, the way it was (py-amqp reads the deliveries,
``wire.decode`` admits them, the latency histogram observed one by one) and the way it
is now, each over the same N events.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import struct
import time
import timeit
import types

import amqp
from amqp.method_framing import frame_handler

from consumer import admission
from lifecycle_common import amqp_frames, broker, timeutil, wire
from lifecycle_common.amqp_deliveries import DeliveryReader
from lifecycle_common.wire import compiled_decode, envelope
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import Event, StartedDetail

HOST = "compute-0042"
CONSUMER_TAG = "amq.ctag-Zr8bE3pVd2Zf4yJm1nq9Qw"


def event_bodies(count: int) -> list[bytes]:
    """Lifecycle events as the agent publishes them (about 1.1 kB each)."""
    now = time.time()
    return [wire.encode(notifications.instance_notification(HOST, int(now) - 3600, DomainEvent(
        seq=1000 + i, occurred_at=now + i / 1000, uuid=f"5b0e6f7c-8d9a-4b1c-9e2f-{i:012x}",
        name=f"instance-{i:08x}", event=int(Event.STARTED),
        detail=int(StartedDetail.BOOTED)))) for i in range(count)]


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def _short(text: str) -> bytes:
    data = text.encode()
    return bytes((len(data),)) + data


def delivery_frames(bodies: list[bytes], channel: int = 1, first_tag: int = 1) -> bytes:
    """The frames RabbitMQ sends for each body delivered to CONSUMER_TAG: basic.deliver,
    a content header with the agent's properties, one body frame."""
    parts = []
    for i, body in enumerate(bodies):
        method = (struct.pack(">HH", 60, 60) + _short(CONSUMER_TAG)
                  + struct.pack(">QB", first_tag + i, 0) + _short("lifecycle")
                  + _short("notifications.info"))
        flags = 0x8000 | 0x4000 | 0x1000 | 0x0080 | 0x0010
        header = (struct.pack(">HHQH", 60, 0, len(body), flags) + _short("application/json")
                  + _short("utf-8") + bytes((2,)) + _short(f"msg-{i}") + _short(HOST))
        parts += [_frame(1, channel, method), _frame(2, channel, header), _frame(3, channel, body)]
    return b"".join(parts)


def py_amqp_connection(on_message) -> amqp.Connection:
    """A py-amqp Connection, never connected, whose channel 1 consumes with
    ``on_message``: what its frame handler does with a delivery, without a socket."""
    conn = amqp.Connection("127.0.0.1:1")
    conn.on_inbound_frame = frame_handler(conn, conn.on_inbound_method)
    channel = amqp.Channel(conn, 1)  # (auto_decode, as kombu's channels)
    channel.callbacks[CONSUMER_TAG] = on_message
    conn._transport = types.SimpleNamespace(_read_buffer=b"")
    return conn


def per_message(fn, count: int, repeat: int) -> float:
    """Microseconds per message of ``fn()``, which handles ``count`` messages."""
    return min(timeit.repeat(fn, number=1, repeat=repeat)) / count * 1e6


@contextlib.contextmanager
def plain_decoder():
    """Admission as it was: every body read by wire.decode."""
    compiled = compiled_decode.decode
    compiled_decode.decode = envelope.decode
    try:
        yield
    finally:
        compiled_decode.decode = compiled


def measure_admission(bodies: list[bytes], repeat: int) -> dict[str, float]:
    policy = admission.Policy(identity=admission.PublisherIdentity.HOST_USER)
    now = time.time()

    def admit_all():
        for body in bodies:
            admission.admit(body, HOST, now, policy)

    def decode_all(decode):
        return lambda: [decode(body) for body in bodies]

    results = {
        "decode: wire.decode (plain)": per_message(decode_all(wire.decode), len(bodies), repeat),
        "decode: compiled_decode.decode": per_message(
            decode_all(compiled_decode.decode), len(bodies), repeat),
    }
    texts = [b.decode() for b in bodies]  # what py-amqp's channels hand over (auto_decode)
    results["decode of text: wire.decode (plain)"] = per_message(
        lambda: [wire.decode(t) for t in texts], len(texts), repeat)
    with plain_decoder():
        results["admit: before (wire.decode)"] = per_message(admit_all, len(bodies), repeat)
    results["admit: now (compiled_decode)"] = per_message(admit_all, len(bodies), repeat)
    moment = timeutil.isoformat_epoch(now)
    results["  of which is_wire_timestamp (plain)"] = per_message(
        lambda: [timeutil.is_wire_timestamp(moment) for _ in bodies], len(bodies), repeat)
    by_second = compiled_decode.is_wire_timestamp_by_second
    results["  of which is_wire_timestamp_by_second"] = per_message(
        lambda: [by_second(moment) for _ in bodies], len(bodies), repeat)
    return results


def measure_frames(bodies: list[bytes], repeat: int) -> dict[str, float]:
    frames = delivery_frames(bodies)
    received: list = []
    unacked: dict = {}

    def on_message(message):  # what BatchQueue._delivered does
        unacked[message.delivery_tag] = None
        received.append(message)

    conn = py_amqp_connection(on_message)
    reader = DeliveryReader(conn, 1, CONSUMER_TAG, on_message)

    def py_amqp():
        received.clear()
        unacked.clear()
        amqp_frames._handle_frames(conn, conn._transport, frames)

    def ours():
        received.clear()
        unacked.clear()
        reader.handle_frames(frames)

    results = {
        "frames: py-amqp's frame handler (before)": per_message(py_amqp, len(bodies), repeat),
        "frames: DeliveryReader (now)": per_message(ours, len(bodies), repeat)}
    py_amqp()
    theirs = [(m.delivery_tag, m.body.encode(), m.properties) for m in received]
    ours()
    assert theirs == [(d.delivery_tag, d.body, d.properties) for d in received], \
        "the two readers disagree"
    return results


class _NullQueue:
    def __init__(self):
        self.dead_letters = types.SimpleNamespace(held=0, down_since=None,
                                                  blocked=broker.BlockedState())

    def ack(self, messages):
        pass

    def dead_letter(self, message, reason, cause, on_done=None):
        pass

    def keepalive(self):
        pass


class _NullStore:
    """A store that applies nothing, instantly."""

    def apply_batch(self, notes):
        return types.SimpleNamespace(
            outcomes=collections.Counter(applied=len(notes), stale=0, ignored=0),
            duplicates=0, heartbeats=0, applied=[], clock_offsets={},
            applied_at=None)


def measure_service(bodies: list[bytes], repeat: int) -> dict[str, float]:
    """ConsumerService.handle_batch around a store that does nothing: admission,
    settlement and bookkeeping per message."""
    from consumer.service import ConsumerService

    frames = delivery_frames(bodies)
    batch: list = []
    conn = py_amqp_connection(batch.append)
    DeliveryReader(conn, 1, CONSUMER_TAG, batch.append).handle_frames(frames)
    service = ConsumerService(_NullQueue(), _NullStore(), host_down_after=60.0, retry_max=1.0)
    return {"handle_batch, null store (now)": per_message(
        lambda: service.handle_batch(batch), len(batch), repeat)}


@contextlib.contextmanager
def as_before():
    """The consumer's loop as it was: py-amqp reads the deliveries, wire.decode admits
    them, the latency histogram is observed one by one."""
    from consumer import observability

    def observe_one_by_one(histogram, amounts):
        for amount in amounts:
            histogram.observe(amount)
    read, observe_all = DeliveryReader.read_available, observability.observe_all
    DeliveryReader.read_available = lambda self: amqp_frames.read_available(self._connection)
    observability.observe_all = observe_one_by_one
    try:
        with plain_decoder():
            yield
    finally:
        DeliveryReader.read_available, observability.observe_all = read, observe_all


class _ApplyingNothing(_NullStore):
    """Says every note applied (so the latency histogram observes each)."""

    def apply_batch(self, notes):
        result = super().apply_batch(notes)
        result.applied = [(n.event_type, time.time() - 0.005) for n in notes]
        return result


def measure_through_broker(count: int, transport_url: str, batch_size: int = 500) -> dict:
    import uuid

    from consumer.amqp_queue import BatchQueue
    from consumer.service import ConsumerService
    from consumer.topology import Topology, declare

    results = {}
    for label, mode in (("before", as_before), ("now", contextlib.nullcontext)):
        name = f"micro-consumer-{uuid.uuid4().hex[:8]}"
        topology = Topology(exchange=name, queue=name, routing_key="notifications.info")
        connector = broker.Connector(broker.plain(transport_url))
        conn, _ = connector.connect()
        try:
            channel = conn.channel()
            declare(channel, topology)
            for body in event_bodies(count):
                channel.basic_publish(amqp.Message(
                    body, content_type="application/json", content_encoding="utf-8",
                    delivery_mode=2, message_id=str(uuid.uuid4())),
                    exchange=name, routing_key=topology.routing_key)
            while channel.queue_declare(name, passive=True).message_count < count:
                time.sleep(0.05)
            queue = BatchQueue(connector, topology, batch_size, linger=0.002)
            service = ConsumerService(queue, _ApplyingNothing(), host_down_after=60.0,
                                      retry_max=1.0)
            with mode():
                queue.connect()
                done, cpu, wall = 0, time.process_time(), time.monotonic()
                while done < count:
                    batch = queue.next_batch(timeout=2.0)
                    if not batch:
                        raise RuntimeError(f"only {done} of {count} events arrived")
                    service.handle_batch(batch)
                    done += len(batch)
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                queue.close()
            results[f"through the broker, null store ({label})"] = cpu / count * 1e6
            results[f"  events/s of one core ({label})"] = count / cpu
            results[f"  wall-clock events/s ({label})"] = count / wall
        finally:
            for delete in (lambda: channel.queue_delete(name),
                           lambda: channel.queue_delete(f"{name}.dlq"),
                           lambda: channel.exchange_delete(f"{name}.dlx"),
                           lambda: channel.exchange_delete(name)):
                with contextlib.suppress(Exception):
                    delete()
            broker.release(conn)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--through-broker", type=int, metavar="N")
    parser.add_argument("--transport-url", default="rabbit://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    if args.through_broker:
        print(f"{args.through_broker} lifecycle events through RabbitMQ, per event:")
        for label, value in measure_through_broker(args.through_broker,
                                                   args.transport_url).items():
            unit = "us/event" if label.startswith("through") else ""
            print(f"{label:48s} {value:9.2f} {unit}")
        return 0
    bodies = event_bodies(args.batch)
    print(f"{args.batch} lifecycle events of {len(bodies[0])} bytes; best of {args.repeat}")
    results = {}
    results.update(measure_frames(bodies, args.repeat))
    results.update(measure_admission(bodies, args.repeat))
    results.update(measure_service(bodies, args.repeat))
    for label, micros in results.items():
        print(f"{label:48s} {micros:7.2f} us/message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
