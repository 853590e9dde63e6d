"""Micro-benchmarks of the agent's per-event work, a few seconds each: what one event
costs to translate and encode, and what an outbox transaction costs.

    python -m benchmarks.micro_agent encode
    python -m benchmarks.micro_agent outbox [--outbox-module FILE] [--synchronous NORMAL]
    python -m benchmarks.micro_agent all
    python -m benchmarks.micro_agent paced [--gap 0.02] [--count 300]

``--outbox-module`` loads another implementation of ``lifecycle_publisher/outbox.py``
(an earlier version of the file, say) so that two can be compared on the same machine
in the same minute. Each figure is the best of ``--repeat`` runs, in microseconds of
this process's CPU time (user and system: a write's system call counts, the time spent
waiting for a core that other processes hold does not) per operation: the best, not
the mean, because the machine's other work only ever adds. ``--dir`` puts the outbox
on another filesystem (``/dev/shm`` leaves the disk's part out).

``paced`` runs each piece of an event's path once every ``--gap`` seconds (0.02: one
agent's 50 events/s in the latency scenario), the thread sleeping in between as the
agent's do, so that caches are as cold as they are at that rate; the median of the
thread's CPU time per call. What the bench's "CPU per event at 50 events/s" is made
of, piece by piece: the callback's Python (with a domain object that answers at once),
the translation and encoding, one outbox transaction of one row (the same with
``locking_mode=EXCLUSIVE``, for comparison), and the AMQP framing.
Not part of ``python -m benchmarks``: these figures are for a docstring or a review,
not for the benchmark's report.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import sys
import tempfile
import time
import timeit
from typing import Callable

from lifecycle_common import wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import DomainState, Event, JobType
from lifecycle_publisher.translation import Observed, Transition

HOST = "compute-01"
EPOCH = 1_795_596_800
NOW = 1_795_596_891.373456

# A storm's mix: a handful of (event, detail, observed, previous) combinations.
_MIX = [
    (Event.STARTED, 0, Observed(DomainState.RUNNING, 1), Transition.STOPPED),
    (Event.SUSPENDED, 0, Observed(DomainState.PAUSED, 1), Transition.STARTED),
    (Event.RESUMED, 0, Observed(DomainState.RUNNING, 3), Transition.PAUSED),
    (Event.STOPPED, 1, Observed(DomainState.SHUTOFF, 2), Transition.RESUMED),
    (Event.SUSPENDED, 1, Observed(DomainState.PAUSED, 2, JobType.UNBOUNDED), None),
    (Event.UNDEFINED, 0, Observed(None), Transition.STOPPED),
]


def sample_events(count: int = 1000) -> list[tuple[DomainEvent, Observed, Transition]]:
    """``count`` events of 100 domains, cycling through the mix, a microsecond apart."""
    events = []
    for n, (kind, detail, observed, previous) in zip(range(count), itertools.cycle(_MIX)):
        uuid = f"3f9c2a1e-7b4d-4e8a-9c61-{n % 100:012d}"
        events.append((DomainEvent(seq=n + 1, occurred_at=NOW + n * 1e-6, uuid=uuid,
                                   name=f"instance-{n % 100:08x}", event=int(kind),
                                   detail=detail), observed, previous))
    return events


def per_call(run: Callable[[], None], calls: int, repeat: int) -> float:
    """Microseconds per call: the best of ``repeat`` runs of ``run`` (which makes
    ``calls`` calls)."""
    return min(timeit.repeat(run, number=1, repeat=repeat, timer=time.process_time)) \
        / calls * 1e6


def bench_encode(repeat: int) -> dict[str, float]:
    events = sample_events()

    def build():
        for event, observed, previous in events:
            notifications.instance_notification(HOST, EPOCH, event, observed, previous)

    notes = [notifications.instance_notification(HOST, EPOCH, e, o, p) for e, o, p in events]

    def encode():
        for note in notes:
            wire.encode(note)

    def both():
        for event, observed, previous in events:
            wire.encode(notifications.instance_notification(HOST, EPOCH, event, observed,
                                                            previous))

    return {"instance_notification": per_call(build, len(events), repeat),
            "encode": per_call(encode, len(events), repeat),
            "instance_notification+encode": per_call(both, len(events), repeat)}


def load_outbox_module(path: str | None):
    if path is None:
        from lifecycle_publisher import outbox
        return outbox
    spec = importlib.util.spec_from_file_location("outbox_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_outbox(repeat: int, module_path: str | None, synchronous: str,
                 directory: str | None = None) -> dict[str, float]:
    """Outbox transactions as the agent runs them: append one row (the writer, one
    event at a time), append 64 (the writer's batch in a burst), and what follows the
    cursor fetched and deleted (the publisher) 64 rows at a time, per row. A real file
    in a temporary directory (on the disk of $TMPDIR, or ``directory``), auto-checkpoint
    off as the agent runs it, the WAL checkpointed between runs."""
    module = load_outbox_module(module_path)
    body = notifications_body()
    results = {}
    with tempfile.TemporaryDirectory(dir=directory) as directory:
        outbox = module.Outbox(os.path.join(directory, "outbox.sqlite"), synchronous,
                               auto_checkpoint=False)
        outbox.open_epoch()
        seqs = itertools.count(1)
        count = 2000

        def append_one():
            for _ in range(count):
                outbox.append([(next(seqs), "instance.started", body)])

        def append_batches():  # the writer's batches in a burst: what is queued
            for _ in range(count // 64):
                outbox.append([(next(seqs), "instance.started", body) for _ in range(64)])

        def fetch_and_delete():
            cursor = 0
            while True:
                rows = outbox.fetch_after(cursor, 64)
                if not rows:
                    return
                cursor = rows[-1].id
                outbox.delete([r.id for r in rows])

        appends, batches, cycles = [], [], []
        for _ in range(repeat):
            appends.append(per_call(append_one, count, 1))
            cycles.append(per_call(fetch_and_delete, count, 1))
            outbox.checkpoint()
            batches.append(per_call(append_batches, count // 64 * 64, 1))
            fetch_and_delete()
            outbox.checkpoint()
        results["append 1 row"] = min(appends)
        results["append 64 rows, per row"] = min(batches)
        results["fetch_after+delete, per row (batches of 64)"] = min(cycles)
        outbox.close()
    return results


def bench_paced(gap: float, count: int, directory: str | None = None) -> dict[str, float]:
    """Each piece of an event's path, once every ``gap`` seconds (see the module's
    docstring); median microseconds of this thread's CPU per call."""
    import sqlite3
    import statistics

    from lifecycle_common.amqp_frames import PublishFramer
    from lifecycle_publisher.domain_event import Sequencer
    from lifecycle_publisher.event_source import EventSource
    from lifecycle_publisher.wakeup import Inbox, Wakeup

    def paced(step: Callable[[int], None]) -> float:
        spent = []
        for n in range(count):
            time.sleep(gap)
            t0 = time.thread_time()
            step(n)
            spent.append(time.thread_time() - t0)
        return statistics.median(spent) * 1e6

    class Domain:  # answers as libvirt-python's virDomain does, without a daemon
        def UUIDString(self):
            return "3f9c2a1e-7b4d-4e8a-9c61-000000000007"

        def name(self):
            return "instance-00000007"

    inbox = Inbox(Wakeup())
    source = EventSource("test:///default", Sequencer(1), inbox.put)
    dom = Domain()

    def callback(n):
        source._on_lifecycle(None, dom, int(Event.RESUMED), 0, None)
        if n % 64 == 63:
            inbox.wake.clear()
            inbox.take(1000)

    events = sample_events(count)
    body = notifications_body()
    framer = PublishFramer(1, "openstack", 131072, user_id="guest")
    results = {"callback (Python)": paced(callback),
               "instance_notification+encode": paced(lambda n: wire.encode(
                   notifications.instance_notification(HOST, EPOCH, *events[n])))}
    from lifecycle_publisher.outbox import Outbox
    with tempfile.TemporaryDirectory(dir=directory) as where:
        outbox = Outbox(os.path.join(where, "outbox.sqlite"), auto_checkpoint=False)
        outbox.open_epoch()
        results["outbox append, 1 row"] = paced(
            lambda n: outbox.append([(n + 1, "instance.started", body)]))
        outbox.close()
        for mode in ("NORMAL", "EXCLUSIVE"):
            db = sqlite3.connect(os.path.join(where, f"{mode}.sqlite"), isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA locking_mode={mode}")
            db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, seq INTEGER, "
                       "event_type TEXT, body BLOB, created_at REAL)")

            def transaction(n, db=db):
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?)",
                           (n + 1, n + 1, "instance.started", body, time.time()))
                db.execute("COMMIT")
            results[f"bare SQLite transaction, 1 row, locking_mode={mode}"] = paced(transaction)
            db.close()
    results["AMQP framing (PublishFramer.publish)"] = paced(
        lambda n: framer.publish(body, "notifications.info", True, message_id=f"outbox-{n}"))
    return results


def notifications_body() -> bytes:
    event, observed, previous = sample_events(1)[0]
    return wire.encode(notifications.instance_notification(HOST, EPOCH, event, observed,
                                                           previous))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro_agent")
    parser.add_argument("what", choices=["encode", "outbox", "all", "paced"])
    parser.add_argument("--gap", type=float, default=0.02, help="paced: seconds between calls")
    parser.add_argument("--count", type=int, default=300, help="paced: calls of each piece")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--outbox-module", help="another outbox.py to measure")
    parser.add_argument("--synchronous", default="NORMAL", choices=["NORMAL", "FULL"])
    parser.add_argument("--dir", help="where the outbox is made (default: $TMPDIR)")
    args = parser.parse_args(argv)
    results = {}
    if args.what in ("encode", "all"):
        results.update(bench_encode(args.repeat))
    if args.what == "paced":
        results.update(bench_paced(args.gap, args.count, args.dir))
    if args.what in ("outbox", "all"):
        results.update(bench_outbox(args.repeat, args.outbox_module, args.synchronous,
                                    args.dir))
    width = max(len(name) for name in results)
    for name, micros in results.items():
        print(f"{name:<{width}}  {micros:7.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
