"""The PostgreSQL pipeline (consumer.db.postgresql_pipeline) against the plain path
(SQLAlchemy Core, consumer.db.portable): the same batches leave the same rows, and
the pipeline keeps the store's guarantees (a duplicate key, a lost connection, the
timeouts)."""

from __future__ import annotations

import datetime
import random
import time
import uuid

import pytest
import sqlalchemy as sa

from consumer.db import engine as db_engine_module
from consumer.db.engine import Timeouts
from consumer.db.tables import faults, hosts, instances, journal, metadata
from consumer.errors import DatabaseUnavailable
from consumer.store import Store
from lifecycle_common import timeutil
from tests.integration.test_store import (
    EPOCH, event, heartbeat, instance_row, inventory, journal_keys, wire_roundtrip)
from lifecycle_common.libvirt_codes import DomainState
from tests.integration.test_store_faults import FIELDS, fault_note

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
]

HOSTS = ("compute-1", "compute-2", "compute-3")


def scenario(seed: int) -> list[list]:
    """Batches of events, faults, inventories (one starting over at a lower epoch),
    heartbeats, instances moving between hosts, redeliveries within and across batches."""
    rng = random.Random(seed)
    vms = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(30)]
    seq = {h: 0 for h in HOSTS}
    epoch = {h: EPOCH for h in HOSTS}
    sent = []
    batches = []
    for b in range(40):
        batch = []
        for _ in range(rng.randint(1, 25)):
            roll = rng.random()
            host = rng.choice(HOSTS)
            seq[host] += 1
            if roll < 0.05:
                new_state = b == 20 and host == HOSTS[0]
                if new_state:
                    epoch[host] -= 1000
                    seq[host] = 1
                listed = rng.sample(vms, 8)
                note = inventory(seq[host], [(vm, vm[:6], rng.choice(
                    [DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF]))
                    for vm in listed], host=host, epoch=epoch[host])
                if new_state:
                    note = _new_state(note)
            elif roll < 0.12:
                note = heartbeat(seq[host], host=host, epoch=epoch[host],
                                 status=rng.choice(["running", "running", "stopping"]))
            elif roll < 0.2 and sent:
                note = rng.choice(sent)  # a redelivery
                seq[host] -= 1
            elif roll < 0.32:
                note = fault_note(rng.choice(sorted(FIELDS)), seq[host], rng.choice(vms),
                                  host=host, epoch=epoch[host], count=rng.randint(1, 50))
            else:
                what = rng.choice(["started", "paused", "resumed", "stopped", "crashed",
                                   "undefined", "defined", "started"])
                note = event(what, seq[host], rng.choice(vms), name="vm", host=host,
                             epoch=epoch[host])
            batch.append(note)
            sent.append(note)
        batches.append(wire_roundtrip(batch))
    return batches


def _new_state(note):
    import dataclasses
    return dataclasses.replace(note, payload=dataclasses.replace(note.payload, new_state=True))


def snapshot(engine) -> dict:
    """Every row, less the columns that say when it was written."""
    with engine.connect() as conn:
        return {
            "instances": sorted(tuple(r) for r in conn.execute(sa.select(
                *(c for c in instances.c if c.name != "applied_at")))),
            "journal": sorted(tuple(r) for r in conn.execute(sa.select(
                *(c for c in journal.c if c.name != "applied_at")))),
            "hosts": sorted((r.name, r.status, r.agent_status, r.libvirt_connected, r.epoch,
                             r.last_seq, r.last_heartbeat_at is None)
                            for r in conn.execute(sa.select(hosts))),
            "faults": sorted(tuple(r) for r in conn.execute(sa.select(
                *(c for c in faults.c if c.name != "applied_at")))),
        }


def empty(engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_pipeline_writes_what_the_plain_path_writes(db_engine, seed):
    batches = scenario(seed)
    outcomes = {}
    snapshots = {}
    for pipelined in (False, True):
        empty(db_engine)
        store = Store(db_engine, pipelined=pipelined)
        assert (store._pipelined is not None) is pipelined
        results = [store.apply_batch(b) for b in batches]
        outcomes[pipelined] = [(dict(r.outcomes), r.duplicates, r.heartbeats,
                                sorted(r.clock_offsets), dict(r.faults)) for r in results]
        snapshots[pipelined] = snapshot(db_engine)
    assert outcomes[True] == outcomes[False]
    assert snapshots[True] == snapshots[False]
    assert any(dup for _, dup, _, _, _ in outcomes[True])  # the scenario held redeliveries
    assert any(f for *_, f in outcomes[True])  # and faults
    *_, state_reason, reboots, last_fault = zip(*snapshots[True]["instances"])
    assert any(state_reason) and any(reboots) and any(last_fault)


def test_a_batch_journaled_already_is_skipped_whole(db_engine):
    store = Store(db_engine)
    vms = [str(uuid.uuid4()) for _ in range(5)]
    first = wire_roundtrip([event("started", i + 1, vm) for i, vm in enumerate(vms)])
    store.apply_batch(first)
    # Redelivered with one new event: the journal's key makes the first attempt fail,
    # the second reads the journal.
    again = store.apply_batch(first + wire_roundtrip([event("paused", 6, vms[0])]))
    assert again.duplicates == 5 and again.outcomes["applied"] == 1
    assert instance_row(db_engine, vms[0]).power_state == "paused"
    assert len(journal_keys(db_engine)) == 6


def test_a_connection_lost_while_idle_is_replaced_without_holding_the_batch(db_engine):
    store = Store(db_engine)
    vm = str(uuid.uuid4())
    store.apply_batch(wire_roundtrip([event("started", 1, vm)]))
    with db_engine.connect() as conn:  # every other session of this database
        terminated = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()").scalar()
    assert terminated >= 1
    result = store.apply_batch(wire_roundtrip([event("paused", 2, vm)]))
    assert result.outcomes["applied"] == 1
    assert instance_row(db_engine, vm).power_state == "paused"


def test_a_lock_held_past_the_lock_timeout_holds_the_batch(db_url):
    engine = db_engine_module.create(db_url, Timeouts(lock=0.5, statement=5))
    holder = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    store = Store(engine)
    vm = str(uuid.uuid4())
    try:
        store.apply_batch(wire_roundtrip([event("started", 1, vm)]))
        with holder.connect() as conn:
            conn.exec_driver_sql("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="lock timeout"):
                store.apply_batch(wire_roundtrip([event("paused", 2, vm)]))
            assert 0.4 < time.monotonic() - started < 3
            conn.rollback()
        result = store.apply_batch(wire_roundtrip([event("paused", 2, vm)]))
        assert result.outcomes["applied"] == 1
    finally:
        engine.dispose()
        holder.dispose()


def _sessions(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()").scalars())


def test_the_pipelined_connection_closes_with_the_engine(db_url, db_engine, wait_for):
    before = _sessions(db_engine)
    engine = db_engine_module.create(db_url)
    store = Store(engine)
    store.apply_batch(wire_roundtrip([heartbeat(0, at=timeutil.utcnow())]))
    ours = _sessions(db_engine) - before
    assert ours
    engine.dispose()
    wait_for(lambda: not (_sessions(db_engine) & ours), timeout=5,
             message="the store's sessions closed")


# -- the arrays encoded here read back as psycopg's own would -------------------------

ARRAYS = [
    ("text_array", "text[]", ['quote "q"', "back\\slash", "{brace},comma", "NULL", "", None,
                              "日本語 🚀", "it's"]),
    ("text_array", "text[]", []),
    ("text_array", "text[]", [None]),
    # ASCII, all of one length / few distinct: ascii_text_array_body's two ways.
    ("text_array", "text[]", ["5b0e6f7c-8d9a-4b1c-9e2f-00000000000" + str(i) for i in range(10)]),
    ("text_array", "text[]", ["instance.resumed", "instance.suspended", "", "x" * 1023] * 3),
    ("text_array", "text[]", ["x" * 1024, "x" * 1024]),
    ("int8_array", "int8[]", [0, 1, -1, 2**63 - 1, -2**63, 1_700_000_000]),
    ("int8_array", "int8[]", []),
    ("bool_array", "bool[]", [True, False, True]),
    ("float8_array", "float8[]", [0.0, -2.5, 1e-300, None, 123456.789]),
    ("timestamp_array", "timestamp[]", [
        datetime.datetime(2026, 12, 6, 23, 59, 59, 999999), datetime.datetime(1970, 1, 1),
        None, datetime.datetime(1999, 12, 31, 23, 59, 59, 1), datetime.datetime(9999, 12, 31)]),
]


def test_aware_datetimes_are_sent_as_their_utc_time(db_url):
    from consumer.db import postgresql_pipeline
    params = db_engine_module.libpq_params(db_engine_module.create(db_url))
    paris = datetime.timezone(datetime.timedelta(hours=1))
    moments = [datetime.datetime(2026, 12, 6, 23, 59, 59, 999999, tzinfo=paris),
               datetime.datetime(1999, 1, 1, tzinfo=timeutil.UTC)]
    with postgresql_pipeline.PipelinedConnection(params).transaction() as tx:
        got = tx._conn.execute("SELECT %b::timestamp[]", (
            postgresql_pipeline.timestamp_array(moments),)).fetchone()[0]
    assert got == [m.astimezone(timeutil.UTC).replace(tzinfo=None) for m in moments]


@pytest.mark.parametrize(("encoder", "sql_type", "values"), ARRAYS)
def test_arrays_encoded_here_read_back_as_psycopgs_own(db_url, encoder, sql_type, values):
    from consumer.db import postgresql_pipeline
    params = db_engine_module.libpq_params(db_engine_module.create(db_url))
    with postgresql_pipeline.PipelinedConnection(params).transaction() as tx:
        conn = tx._conn
        ours = conn.execute(f"SELECT %b::{sql_type}",
                            (getattr(postgresql_pipeline, encoder)(values),)).fetchone()[0]
        plain = conn.execute(f"SELECT %s::{sql_type}", (values,)).fetchone()[0]
    assert ours == plain == values
