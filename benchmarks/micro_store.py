"""Micro-benchmark of Store.apply_batch against a scratch PostgreSQL database.

10,000 instances on 20 hosts (start inventories), then batches of 500 state changes
(suspend, resume, destroy, create; for step: for domain: for host), as benchmarks/apply.py
fills the queue. Prints per batch: wall ms, client CPU ms, server CPU ms (every postgres
process, as benchmarks.harness.postgres_cpu_seconds), and per event in us.

usage: python -m benchmarks.micro_store MODE [steps]   MODE: portable | pipelined
"""
import os
import subprocess
import sys
import time


from consumer.db import engine as db_engine, migrate
from consumer.store import Store
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_publisher.libvirt_codes import (
    DomainState, Event, ResumedDetail, StartedDetail, StoppedDetail, SuspendedDetail)
from lifecycle_common import wire

from benchmarks.harness import postgres_cpu_seconds

HOSTS, DOMAINS, BATCH = 20, 500, 500
EPOCH = 1_700_000_000
STEPS = [(Event.SUSPENDED, SuspendedDetail.PAUSED), (Event.RESUMED, ResumedDetail.UNPAUSED),
         (Event.STOPPED, StoppedDetail.DESTROYED), (Event.STARTED, StartedDetail.BOOTED)]


def main():
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    name = f"fold_bench_{os.getpid()}"
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)
    try:
        url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
        engine = db_engine.create(url)
        migrate.sync(engine)
        for stmt in filter(None, os.environ.get("BENCH_SQL", "").split(";")):
            with engine.begin() as conn:
                conn.exec_driver_sql(stmt)
        store = Store(engine, pipelined=(mode == "pipelined"))
        hosts = [f"bench-h{i:02d}" for i in range(HOSTS)]
        uuids = {h: [f"{i:08d}-0000-4000-8000-{j:012d}" for j in range(DOMAINS)]
                 for i, h in enumerate(hosts)}
        seq = {h: 0 for h in hosts}
        t = 1_764_000_000.0

        def nxt(h):
            seq[h] += 1
            return seq[h]
        inventories = [notifications.inventory_notification(h, EPOCH, Inventory(
            seq=nxt(h), occurred_at=t, reason="start",
            domains=tuple(DomainSnapshot(u, u[:8], int(DomainState.RUNNING), 1) for u in uuids[h])))
            for h in hosts]
        decode = lambda n: wire.decode(wire.encode(n))  # noqa: E731
        store.apply_batch([decode(n) for n in inventories])
        notes = []
        for s in range(steps):
            code, detail = STEPS[s % 4]
            for d in range(DOMAINS):
                for h in hosts:
                    notes.append(decode(notifications.instance_notification(h, EPOCH, DomainEvent(
                        seq=nxt(h), occurred_at=t + seq[h], uuid=uuids[h][d], name="vm",
                        event=int(code), detail=int(detail)))))
        batches = [notes[i:i + BATCH] for i in range(0, len(notes), BATCH)]
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
        postgres_cpu_seconds = backend_cpu  # noqa: F811 - this database's backends only
        srv0, cpu0, wall0 = postgres_cpu_seconds(), time.process_time(), time.perf_counter()
        for b in rest:
            result = store.apply_batch(b)
            assert result.duplicates == 0, result
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        srv = postgres_cpu_seconds() - srv0
        print(f"{mode}: {len(rest)} batches, {n} events: {n / wall:.0f} ev/s; per batch "
              f"wall {wall / len(rest) * 1e3:.2f} ms, client CPU {cpu / len(rest) * 1e3:.2f} ms, "
              f"server CPU {srv / len(rest) * 1e3:.2f} ms; per event client {cpu / n * 1e6:.1f} us, "
              f"server {srv / n * 1e6:.1f} us")
        # the batches again: every one a duplicate
        t0 = time.perf_counter()
        for b in batches[-4:]:
            assert store.apply_batch(b).duplicates == len(b)
        print(f"  redelivered batch: {(time.perf_counter() - t0) / 4 * 1e3:.2f} ms")
        mon.close()
        engine.dispose()
    finally:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--force", name], check=True)


if __name__ == "__main__":
    main()
