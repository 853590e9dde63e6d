"""Live migration seen from two hosts' agents: whatever order the consumer receives
their events in, the destination ends up the owner with the right power state, and
the source's own migration events, its late stop and undefine, change nothing."""

from __future__ import annotations

import itertools
import uuid

import pytest
import sqlalchemy as sa

from consumer.db.tables import instances
from consumer.store import Store
from lifecycle_common import wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    DomainState, Event, JobType, ResumedDetail, ShutoffReason, StartedDetail, StoppedDetail,
    SuspendedDetail, UndefinedDetail)
from lifecycle_publisher.translation import Observed, Transition

pytestmark = pytest.mark.integration

SRC, DST = "compute-src", "compute-dst"
EPOCH = 1_700_000_000
T0 = 1_764_000_000.0

RUNNING = Observed(DomainState.RUNNING)
PAUSED = Observed(DomainState.PAUSED)
GONE = Observed(None)


def note(host, seq, at, uuid_, event, detail, observed=None, previous=None):
    """A notification exactly as an agent on ``host`` would publish it (encoded and
    decoded, as the consumer receives it). Each instance gets its own epochs, so that
    scenarios replayed for many instances do not share journal keys."""
    n = notifications.instance_notification(host, EPOCH + uuid.UUID(uuid_).int % 10**9, DomainEvent(
        seq=seq, occurred_at=T0 + at, uuid=uuid_, name="vm", event=int(event),
        detail=int(detail)), observed, previous)
    return wire.decode(wire.encode(n))


def successful_migration(u):
    return [
        note(DST, 1, 1.0, u, Event.STARTED, StartedDetail.MIGRATED, PAUSED),
        note(SRC, 2, 2.0, u, Event.SUSPENDED, SuspendedDetail.MIGRATED,
             Observed(DomainState.PAUSED, job=JobType.COMPLETED)),
        note(DST, 2, 2.1, u, Event.RESUMED, ResumedDetail.MIGRATED, RUNNING),
        note(SRC, 3, 2.2, u, Event.STOPPED, StoppedDetail.MIGRATED, GONE),
        note(SRC, 4, 2.5, u, Event.UNDEFINED, UndefinedDetail.REMOVED, GONE,
             previous=Transition.MIGRATED),
    ]


def failed_migration(u):
    return [
        note(DST, 1, 1.0, u, Event.STARTED, StartedDetail.MIGRATED, PAUSED),
        # Failed: libvirt still says SUSPENDED/MIGRATED, and the source runs on.
        note(SRC, 2, 2.0, u, Event.SUSPENDED, SuspendedDetail.MIGRATED,
             Observed(DomainState.RUNNING, job=JobType.FAILED)),
        note(DST, 2, 2.1, u, Event.STOPPED, StoppedDetail.FAILED, GONE),
        note(DST, 3, 2.2, u, Event.UNDEFINED, UndefinedDetail.REMOVED, GONE),
    ]


def start_on_source(store, u):
    store.apply_batch([note(SRC, 1, 0.0, u, Event.STARTED, StartedDetail.BOOTED, RUNNING)])


def row(engine, u):
    with engine.connect() as conn:
        return conn.execute(sa.select(instances).where(instances.c.uuid == u)).one()


def test_translation_tells_migration_from_pause():
    u = str(uuid.uuid4())
    [arriving, migrating, resumed, migrated, cleanup] = successful_migration(u)
    assert [n.event_type for n in (arriving, migrating, resumed, migrated, cleanup)] == [
        "instance.arriving", "instance.migrating", "instance.resumed", "instance.migrated",
        "instance.migrated"]
    assert migrating.payload.power_state is None and migrating.payload.migration_job == "COMPLETED"
    failed = failed_migration(u)[1]
    assert failed.event_type == "instance.paused"
    assert failed.payload.power_state == "running"  # level-triggered: it runs on


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("scenario, owner, power_state", [
    (successful_migration, DST, "running"),
    (failed_migration, SRC, "running"),
])
def test_every_delivery_order_converges(db_engine, scenario, owner, power_state):
    store = Store(db_engine)
    orders = list(itertools.permutations(range(len(scenario(str(uuid.uuid4()))))))
    for order in orders:
        u = str(uuid.uuid4())
        start_on_source(store, u)
        notes = scenario(u)
        for i in order:  # one batch each: the worst case for ordering
            store.apply_batch([notes[i]])
        r = row(db_engine, u)
        assert (r.host, r.power_state, r.deleted) == (owner, power_state, False), order


def test_migration_on_every_backend(db_engine):
    store = Store(db_engine)
    u = str(uuid.uuid4())
    start_on_source(store, u)
    store.apply_batch(successful_migration(u))  # all in one batch
    r = row(db_engine, u)
    assert (r.host, r.power_state, r.deleted) == (DST, "running", False)

    # Late news from the source changes nothing: a redelivered old start, its
    # inventory without the guest, or still listing a shut-off leftover.
    store.apply_batch([note(SRC, 1, 0.0, u, Event.STARTED, StartedDetail.BOOTED, RUNNING)])
    for seq, domains in ((5, ()), (6, (DomainSnapshot(u, "vm", int(DomainState.SHUTOFF),
                                                      int(ShutoffReason.MIGRATED)),))):
        store.apply_batch([wire.decode(wire.encode(notifications.inventory_notification(
            SRC, EPOCH + uuid.UUID(u).int % 10**9, Inventory(seq=seq, occurred_at=T0 + 10 + seq, reason="periodic",
                                  domains=domains))))])
    r = row(db_engine, u)
    assert (r.host, r.power_state, r.deleted) == (DST, "running", False)

    # The destination's own later events apply as usual.
    store.apply_batch([note(DST, 3, 20.0, u, Event.SUSPENDED, SuspendedDetail.PAUSED, PAUSED)])
    assert row(db_engine, u).power_state == "paused"
