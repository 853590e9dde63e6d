"""A real ``ConsumerService`` on a test's own queue (``amqp_isolation``) and database
engine, and the valid notifications tests publish to it."""

from __future__ import annotations

import time

import sqlalchemy as sa

from consumer.amqp_queue import BatchQueue
from consumer.db.tables import hosts, journal
from consumer.service import ConsumerService
from consumer.store import Store
from consumer.topology import Topology, declare
from lifecycle_common import broker, wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import Event, StartedDetail, SuspendedDetail

ROUTING_KEY = "notifications.info"
EPOCH = 1_700_000_000


def declared_queue(isolation, label: str = "consumer") -> Topology:
    """A unique consumer queue, its topology declared as the service would."""
    topology = Topology(exchange=isolation.exchange, queue=isolation.queue_name(label),
                        routing_key=ROUTING_KEY)
    declare(isolation.channel, topology)
    return topology


def service(isolation, topology: Topology, engine: sa.Engine, **options) -> ConsumerService:
    """A ConsumerService on ``topology`` and ``engine``; ``options`` as its own."""
    options.setdefault("host_down_after", 60.0)
    options.setdefault("retry_max", 0.5)
    return ConsumerService(
        BatchQueue(broker.Connector(broker.plain(isolation.transport_url)), topology,
                   batch_size=50, linger=0.002),
        Store(engine), **options)


def instance_event(host: str, seq: int, vm: str, paused: bool = False,
                   epoch: int = EPOCH) -> bytes:
    """An instance.started (or .paused) notification, occurred now, as the agent sends it."""
    code, detail = ((Event.SUSPENDED, SuspendedDetail.PAUSED) if paused
                    else (Event.STARTED, StartedDetail.BOOTED))
    return wire.encode(notifications.instance_notification(host, epoch, DomainEvent(
        seq=seq, occurred_at=time.time(), uuid=vm, name=f"vm-{seq}",
        event=int(code), detail=int(detail))))


def heartbeat(host: str, last_seq: int, epoch: int = EPOCH) -> bytes:
    return wire.encode(notifications.heartbeat_notification(
        host, epoch, last_seq, interval=0.5, status="running", libvirt_connected=True))


def journal_keys(engine: sa.Engine) -> list[tuple[str, int, int]]:
    """Every (host, epoch, seq) in the journal, duplicates included (there can be none:
    it is the primary key; counted all the same)."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(journal.c.host, journal.c.epoch, journal.c.seq))]


def host_status(engine: sa.Engine, name: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(hosts.c.status).where(hosts.c.name == name)).scalar()
