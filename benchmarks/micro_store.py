"""Micro-benchmark of Store.apply_batch against a scratch PostgreSQL database.

10,000 instances on 20 hosts (start inventories), then batches of 500 state changes
(suspend, resume, destroy, create; for step: for domain: for host), as benchmarks/apply.py
fills the queue. Prints per batch: wall ms, client CPU ms, server CPU ms (the database's
own server processes), and per event in us; and per event, every postgres process's CPU
(as benchmarks.harness.postgres_cpu_seconds counts it: walwriter, checkpointer and the
others too, and any other database's work on the machine meanwhile).

usage: python -m benchmarks.micro_store MODE [steps]
       MODE: portable | pipelined | statements | fold
(MICRO_STORE_BATCH=N in the environment: batches of N rather than 500)

``fold``: no database; ``consumer.fold`` alone (``Batch``, ``fresh``, ``instances_to_load``,
``words_wanted``, ``host_names``, then ``fold``) over the same batches against rows kept
in memory as the store would write them: CPU per event of the preparation and of
``fold`` itself, the best of 7 passes.

``statements``: the pipelined store's statements sent one at a time (no pipeline), the
server process's CPU of each read from /proc/<pid>/schedstat (nanoseconds), summed per
kind of statement and given per event; then the floor on this machine: a bare INSERT of
500 rows (one bigint key) and a bare UPDATE by primary key of 500 of 10,000 rows, each
from one unnest of binary arrays, per row.
"""
import collections
import contextlib
import os
import subprocess
import sys
import time


from consumer.db import engine as db_engine, migrate
from consumer.store import Store
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import (
    DomainState, Event, ResumedDetail, StartedDetail, StoppedDetail, SuspendedDetail)
from lifecycle_common import wire

from benchmarks.harness import postgres_cpu_seconds

HOSTS, DOMAINS = 20, 500
BATCH = int(os.environ.get("MICRO_STORE_BATCH", "500"))  # [consumer] batch_size
EPOCH = 1_700_000_000
STEPS = [(Event.SUSPENDED, SuspendedDetail.PAUSED), (Event.RESUMED, ResumedDetail.UNPAUSED),
         (Event.STOPPED, StoppedDetail.DESTROYED), (Event.STARTED, StartedDetail.BOOTED)]


def workload(steps: int) -> tuple[list, list[list]]:
    """The start inventories of HOSTS hosts of DOMAINS instances each, and ``steps``
    rounds of state changes (STEPS, each domain of each host in turn) in batches of
    BATCH, decoded as the consumer would read them."""
    hosts = [f"bench-h{i:02d}" for i in range(HOSTS)]
    uuids = {h: [f"{i:08d}-0000-4000-8000-{j:012d}" for j in range(DOMAINS)]
             for i, h in enumerate(hosts)}
    seq = {h: 0 for h in hosts}
    t = 1_764_000_000.0

    def nxt(h):
        seq[h] += 1
        return seq[h]

    def decode(note):
        return wire.decode(wire.encode(note))
    inventories = [decode(notifications.inventory_notification(h, EPOCH, Inventory(
        seq=nxt(h), occurred_at=t, reason="start",
        domains=tuple(DomainSnapshot(u, u[:8], int(DomainState.RUNNING), 1) for u in uuids[h]))))
        for h in hosts]
    notes = []
    for s in range(steps):
        code, detail = STEPS[s % 4]
        for d in range(DOMAINS):
            for h in hosts:
                notes.append(decode(notifications.instance_notification(h, EPOCH, DomainEvent(
                    seq=nxt(h), occurred_at=t + seq[h], uuid=uuids[h][d], name="vm",
                    event=int(code), detail=int(detail)))))
    return inventories, [notes[i:i + BATCH] for i in range(0, len(notes), BATCH)]


def main():
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    if mode == "fold":
        fold_alone(steps)
        return
    name = f"fold_bench_{os.getpid()}"
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)
    try:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        engine = db_engine.create(url)
        migrate.sync(engine)
        for stmt in filter(None, os.environ.get("BENCH_SQL", "").split(";")):
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
        store = Store(engine, pipelined=(mode != "portable"))
        inventories, batches = workload(steps)
        store.apply_batch(inventories)
        # warm up: first 4 batches
        for b in batches[:4]:
            store.apply_batch(b)
        rest = batches[4:]
        n = sum(len(b) for b in rest)
        import psycopg
        mon = psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True)
        pids = [r[0] for r in mon.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]

        def backend_cpu():
            total = 0
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
                except FileNotFoundError:
                    pass
            return total / os.sysconf("SC_CLK_TCK")
        if mode == "statements":
            _per_statement(store, rest, n)
            return
        all0 = postgres_cpu_seconds()  # every postgres process (as the apply benchmark)
        srv0, cpu0, wall0 = backend_cpu(), time.process_time(), time.perf_counter()
        for b in rest:
            result = store.apply_batch(b)
            assert result.duplicates == 0, result
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        srv = backend_cpu() - srv0
        every = postgres_cpu_seconds() - all0
        print(f"{mode}: {len(rest)} batches, {n} events: {n / wall:.0f} ev/s; per batch "
              f"wall {wall / len(rest) * 1e3:.2f} ms, client CPU {cpu / len(rest) * 1e3:.2f} ms, "
              f"server CPU {srv / len(rest) * 1e3:.2f} ms; per event client {cpu / n * 1e6:.1f} us, "
              f"server {srv / n * 1e6:.1f} us (every postgres process: {every / n * 1e6:.1f} us)")
        # the batches again: every one a duplicate
        t0 = time.perf_counter()
        for b in batches[-4:]:
            assert store.apply_batch(b).duplicates == len(b)
        print(f"  redelivered batch: {(time.perf_counter() - t0) / 4 * 1e3:.2f} ms")
        mon.close()
        engine.dispose()
    finally:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--force", name], check=True)


def _server_ns(pid: int) -> int:
    """CPU nanoseconds the server process ``pid`` has run (/proc/<pid>/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _per_statement(store, batches, events: int) -> None:
    """Apply ``batches`` through the pipelined store's transaction, each statement sent
    and awaited alone, and print the server's CPU per event for each kind."""
    from consumer.db import postgresql_pipeline as pp
    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    names = {v: k for k, v in vars(pp).items() if isinstance(v, str) and k.isupper()}

    class Timed(pp.PipelinedTransaction):
        def __init__(self, conn):
            super().__init__(conn)
            pid = conn.info.backend_pid
            real = conn.execute

            class Proxy:
                """The connection, but for ``pipeline`` (none: each statement is sent,
                run and its results read before ``execute`` returns) and ``execute``
                (timed)."""
                def __getattr__(self, name):
                    return getattr(conn, name)

                def pipeline(self):
                    return contextlib.nullcontext()

                def execute(self, query, params=None, prepare=None):
                    before = _server_ns(pid)
                    cursor = real(query, params, prepare=prepare)
                    kind = names.get(query, query)
                    spent[kind] += _server_ns(pid) - before
                    calls[kind] += 1
                    return cursor
            self._conn = Proxy()

    real_transaction = pp.PipelinedTransaction
    pp.PipelinedTransaction = Timed
    try:
        for b in batches:
            store.apply_batch(b)
    finally:
        pp.PipelinedTransaction = real_transaction
    total = sum(spent.values())
    print(f"statements one at a time, {len(batches)} batches, {events} events: server CPU "
          f"{total / events / 1e3:.1f} us per event")
    for kind, ns in spent.most_common():
        print(f"  {kind:22s} {ns / events / 1e3:5.1f} us per event  ({calls[kind]} calls)")
    _floor(store)


def _floor(store) -> None:
    """What a bare INSERT and a bare UPDATE of 500 rows cost the server here, per row."""
    import psycopg
    from consumer.db import postgresql_pipeline as pp
    conn = store._pipelined._connection()
    pid = conn.info.backend_pid
    conn.execute("CREATE TABLE floor_t (k int8 PRIMARY KEY, v int8) WITH (fillfactor = 70)")
    conn.execute("INSERT INTO floor_t SELECT g, 0 FROM generate_series(1, 10000) g")
    rounds, size = 40, 500
    ins = upd = 0
    for r in range(rounds):
        keys = pp.int8_array(list(range(100000 + r * size, 100000 + (r + 1) * size)))
        before = _server_ns(pid)
        conn.execute("INSERT INTO floor_t SELECT k, 0 FROM unnest(%b::int8[]) AS k",
                     (keys,), prepare=True)
        ins += _server_ns(pid) - before
        keys = pp.int8_array(list(range(1 + (r * size) % 9500, 1 + (r * size) % 9500 + size)))
        before = _server_ns(pid)
        conn.execute("UPDATE floor_t SET v = v + 1 FROM unnest(%b::int8[]) AS u(k) "
                     "WHERE floor_t.k = u.k", (keys,), prepare=True)
        upd += _server_ns(pid) - before
    n = rounds * size
    print(f"floor (autocommit, {rounds} x {size} rows): INSERT {ins / n / 1e3:.1f} us a row, "
          f"UPDATE by key {upd / n / 1e3:.1f} us a row")
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=conn.info.dbname,
                         autocommit=True) as other:
        pid2 = other.info.backend_pid
        before = _server_ns(pid2)
        for _ in range(200):
            other.execute("SELECT 1", prepare=True)
        print(f"floor: a statement's round trip (SELECT 1, prepared) "
              f"{(_server_ns(pid2) - before) / 200 / 1e3:.1f} us")


def fold_alone(steps: int, passes: int = 7) -> None:
    """The fold's CPU per event, without a database (see the module's docstring)."""
    from consumer import fold
    from lifecycle_common import timeutil
    inventories, batches = workload(steps)
    now = timeutil.utcnow()

    def apply(notes, rows, host_rows):
        """One batch as the store applies it (no journal read, no last words held);
        returns the CPU seconds of the preparation and of the fold."""
        t0 = time.process_time()
        batch = fold.Batch(notes)
        fresh = batch.fresh(set())
        load, inventory_hosts = fold.instances_to_load(fresh)
        loaded = {u: rows[u] for u in load if u in rows}
        if inventory_hosts:  # (the store's query: every row not deleted of these hosts)
            loaded.update((u, r) for u, r in rows.items()
                          if r.host in inventory_hosts and not r.deleted)
        fold.words_wanted(fresh, loaded)
        named = {h: host_rows[h] for h in batch.host_names(fresh) if h in host_rows}
        t1 = time.process_time()
        writes = fold.fold(batch, set(), loaded, {}, named, now)
        t2 = time.process_time()
        rows.update((r.uuid, r) for r in writes.new_instances + writes.changed_instances)
        host_rows.update((h.name, h) for h in writes.new_hosts + writes.changed_hosts)
        return t1 - t0, t2 - t1

    start_rows, start_hosts = {}, {}
    apply(inventories, start_rows, start_hosts)
    best_prepare = best_fold = float("inf")
    for _ in range(passes):
        rows, host_rows = dict(start_rows), dict(start_hosts)
        prepare = folding = 0.0
        for b in batches:
            p, f = apply(b, rows, host_rows)
            prepare, folding = prepare + p, folding + f
        best_prepare, best_fold = min(best_prepare, prepare), min(best_fold, folding)
    n = sum(len(b) for b in batches)
    print(f"fold: {len(batches)} batches, {n} events; per event: preparing "
          f"{best_prepare / n * 1e6:.2f} us, fold {best_fold / n * 1e6:.2f} us (best of "
          f"{passes})")


if __name__ == "__main__":
    main()
