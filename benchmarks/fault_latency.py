"""fault latency: from libvirt's callback to the database row, for each fault a real
QEMU guest can be made to raise on this machine (issue 18's closing figures).

``python -m benchmarks.fault_latency [--rounds N] [--database URL]``

One consumer and one ``lifecycle-agent`` on qemu:///system, as processes
(lab.pipeline), and one guest per fault (lab.guests: 32 MiB, no OS). Each round
provokes the fault once and reads, from the journal, the row it made: its latency is
``applied_at`` (stamped in the applying transaction) minus ``occurred_at`` (stamped in
the agent's libvirt callback), as in the latency benchmark. The faults:

- reset: ``virsh reset``, libvirt's REBOOT -> instance.rebooted;
- watchdog: the ib700 armed with its shortest timeout, WATCHDOG -> instance.watchdog
  (the guest resumed before the next round);
- panic: pvpanic, LIFECYCLE(CRASHED, PANICKED) -> instance.crashed (the guest
  destroyed and started again before the next round);
- I/O error: an NBD disk failing every read with EIO (nbdkit's error filter),
  IO_ERROR_REASON -> instance.io_error (each ``virsh resume`` retries the read).

Rounds are paced at twice the agent's fault_coalesce_interval and a little more, so
that each round's fault opens a coalescing window of its own and is published at once:
this measures the path of a fault, not of a storm's summary (which is, by design, up to
one interval later). The guests, nbdkit and the processes are removed at the end, also
on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import uuid as uuid_module

from lab import guests
from lab.pipeline import Pipeline, virsh
from lab.waiting import wait_for
from lifecycle_common import timeutil

URI = "qemu:///system"
HOST = "fault-bench-host"
COALESCE_INTERVAL = 1.0  # the agent's default fault_coalesce_interval
PACE = 2 * COALESCE_INTERVAL + 0.3  # a round's fault then opens a window of its own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fault_latency",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per fault (10)")
    parser.add_argument("--database", help="the consumer's database URL (default: SQLite "
                                           "in the work directory)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures there")
    args = parser.parse_args(argv)
    for tool, missing in ((guests.EMULATOR, not os.path.exists(guests.EMULATOR)),
                          ("nbdkit", not guests.nbdkit_available())):
        if missing:
            print(f"fault latency: {tool} is missing; run tools/bootstrap.sh", file=sys.stderr)
            return 2
    tag = uuid_module.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="fault-latency-") as workdir:
        pipeline = Pipeline(workdir, exchange=f"fault-latency-{tag}",
                            queue=f"fault-latency-{tag}", database=args.database)
        made: list[str] = []
        try:
            with guests.NbdErrorServer(os.path.join(workdir, "nbdkit.log")) as nbd:
                figures = _measure(pipeline, nbd, args.rounds, tag, made)
        finally:
            for name in made:
                guests.remove_guest(URI, name)
            pipeline.stop()
            pipeline.delete_broker_objects()
    _print(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def _measure(pipeline: Pipeline, nbd: guests.NbdErrorServer, rounds: int, tag: str,
             made: list[str]) -> list[dict]:
    from consumer.db import engine as db_engine
    pipeline.db_sync()
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI, fault_coalesce_interval=COALESCE_INTERVAL)
    engine = db_engine.create(pipeline.database)
    try:
        def guest(kind: str, xml_for) -> str:
            name = f"fl-{tag}-{kind}"
            path = os.path.join(pipeline.workdir, f"{name}.xml")
            with open(path, "w") as f:
                f.write(xml_for(name))
            made.append(name)
            virsh(URI, "define", path)
            return virsh(URI, "domuuid", name).stdout.strip()

        reset = guest("reset", guests.guest_xml)
        watchdog = guest("watchdog", guests.watchdog_guest_xml)
        panic = guest("panic", guests.panic_guest_xml)
        eio = guest("eio", lambda name: guests.nbd_disk_guest_xml(name, nbd.port))
        for name in made:
            virsh(URI, "start", name)
        # The EIO guest pauses on the BIOS's first read, a few seconds after its start.
        wait_for(lambda: _rows(engine, eio, "instance.io_error"), 30,
                 "the EIO guest's first I/O error in the database")
        cases = [
            ("reset", "REBOOT", "instance.rebooted", reset,
             lambda: virsh(URI, "reset", made[0])),
            ("watchdog", "WATCHDOG", "instance.watchdog", watchdog,
             lambda: _rearm(made[1])),
            ("panic", "LIFECYCLE CRASHED/PANICKED", "instance.crashed", panic,
             lambda: _repanic(made[2])),
            ("I/O error (EIO)", "IO_ERROR_REASON", "instance.io_error", eio,
             lambda: virsh(URI, "resume", made[3])),
        ]
        figures = []
        for label, libvirt_event, event_type, uuid, provoke in cases:
            lags = []
            for _ in range(rounds):
                time.sleep(PACE)  # pacing, not waiting: see the module's docstring
                seen = len(_rows(engine, uuid, event_type))
                provoke()
                rows = wait_for(lambda: _more(engine, uuid, event_type, seen), 15,
                                f"a new {event_type} row for {label}", interval=0.02)
                lags.append(_lag_ms(rows[seen]))  # the round's first: oldest first
            figures.append({"fault": label, "libvirt_event": libvirt_event,
                            "event_type": event_type, "rounds": len(lags),
                            "median_ms": statistics.median(lags), "min_ms": min(lags),
                            "max_ms": max(lags)})
        return figures
    finally:
        engine.dispose()


def _rearm(name: str) -> None:
    """Resume the guest its watchdog paused (if it did), and fire the watchdog again."""
    if virsh(URI, "domstate", name).stdout.strip() == "paused":
        virsh(URI, "resume", name)
    guests.arm_watchdog(URI, name)


def _repanic(name: str) -> None:
    """Start the crashed guest afresh (if it crashed), and panic it again."""
    if virsh(URI, "domstate", name).stdout.strip() != "running":
        virsh(URI, "destroy", name, check=False)
        virsh(URI, "start", name)
    guests.panic(URI, name)


def _rows(engine, uuid: str, event_type: str) -> list[dict]:
    from consumer.db import queries
    return queries.list_events(engine, instance=uuid, event_types=[event_type], limit=1000)


def _more(engine, uuid: str, event_type: str, seen: int) -> list[dict] | None:
    rows = _rows(engine, uuid, event_type)
    return rows if len(rows) > seen else None


def _lag_ms(row: dict) -> float:
    delta = timeutil.parse(row["applied_at"]) - timeutil.parse(row["occurred_at"])
    return delta / datetime.timedelta(milliseconds=1)


def _print(figures: list[dict]) -> None:
    from consumer.cli import tables
    rows = [{**f, **{k: f"{f[k]:.1f}" for k in ("median_ms", "min_ms", "max_ms")}}
            for f in figures]
    print("libvirt callback -> database row committed, real QEMU guests on " + URI)
    print(tables.table(rows, ["fault", "libvirt_event", "event_type", "rounds", "median_ms",
                              "min_ms", "max_ms"],
                       right=["rounds", "median_ms", "min_ms", "max_ms"]))


if __name__ == "__main__":
    sys.exit(main())
