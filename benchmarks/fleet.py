"""fleet: 200 agents, 50 domains each (10,000 instances), into one queue, with one, two
and four competing consumers on PostgreSQL; then a storm: every instance of 50 hosts
changes at once.

The agents are the agent's own code (``benchmarks.hosts``) on their own test
hypervisors, in ``fleet_processes`` processes of 20 (with 100 in one process, its 400
threads took turns at the one GIL and every event waited for several of them: p50
140 ms for what takes 4 ms with 20), with heartbeats and inventories at their defaults
(every 10 s, every 600 s) besides the load: a steady stream of changes spread over
every host and domain. The CPU of the start inventories is metered, per entry, then
that of the idle fleet (only beating) with one consumer. For each number of consumers:
- steady: the stream at ``fleet_rate`` for ``fleet_seconds``; latency callback ->
  committed (journal applied_at - occurred_at), the CPU that the broker, PostgreSQL,
  the consumers and the agents' processes used, per event (and per event over what
  they use idle), and the consumers' RSS;
- drain: with the consumers stopped, every domain takes one step (10,000 events in
  the queue); the consumers start together and the clock runs until the journal has
  every event: what that many consumers can apply. The fill and the drain are
  metered too: the CPU per event when no part waits for work.
Last, agents that only beat (``beat_hosts`` every ``beat_interval``: 1,000 heartbeats/s,
what 10,000 hosts send) give the CPU of one heartbeat. The CPU per event, per
inventory entry and per heartbeat of each part is what docs/capacity.md projects from.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa

from benchmarks import harness
from benchmarks.harness import BenchError, CpuMeter, HostsProcess, Row, Run, ScenarioResult

SHAPE = harness.IN_PROCESS  # the agents share one process with their hypervisors
NAME = "fleet"


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    url, engine = run.main_database()
    topology = run.topology(NAME)
    per = p.fleet_hosts // p.fleet_processes
    groups = {f"p{g}": [f"{NAME}-p{g}-h{i:03d}" for i in range(per)]
              for g in range(p.fleet_processes)}
    agent_opts = {"heartbeat_interval": 10.0, "inventory_interval": 600.0}
    processes = {g: HostsProcess(run, f"{NAME}-hosts-{g}", names, p.fleet_domains,
                                 topology.exchange, **agent_opts)
                 for g, names in groups.items()}
    try:
        pipeline, procs = harness.start_consumers(run, f"{NAME}-start", topology, url, 1)
        broker_rss = _broker_rss_mb()
        meter = _meter(processes, [proc.pid for proc in procs]).start()
        t0 = time.monotonic()
        starts = _together({g: (lambda h=h: h.call("start", timeout=600, ready_timeout=540))
                            for g, h in processes.items()})
        started_in = time.monotonic() - t0
        last_seq = {k: v for s in starts.values() for k, v in s["last_seq"].items()}
        harness.wait_for(lambda: harness.caught_up(engine, last_seq), 300,
                         "the start inventories in the database")
        inventories = _per(meter.stop(), p.fleet_hosts * p.fleet_domains)
        # What the broker holds for each agent's connection (its channel, buffers).
        connection_kb = (_broker_rss_mb() - broker_rss) * 1024 / p.fleet_hosts
        # Idle: the fleet beating every 10 s and nothing else, one consumer.
        idle_meter = _meter(processes, [proc.pid for proc in procs]).start()
        time.sleep(p.fleet_seconds / 2)  # the idle window
        idle = {label: used / idle_meter.wall for label, used in idle_meter.stop().items()}
        pipeline.stop()
        phases = [_phase(run, sampler, processes, engine, topology, url, consumers, idle)
                  for consumers in p.fleet_consumers]
        storm_hosts = [n for i in range(per) for names in groups.values()
                       for n in names[i:i + 1]][:p.storm_hosts]  # spread over the processes
        storm = _storm(run, sampler, processes, storm_hosts, engine, topology, url,
                       max(p.fleet_consumers))
    finally:
        for h in processes.values():
            h.close()
    beats = _heartbeats(run, engine, topology, url, p.beat_hosts, p.beat_interval,
                        p.beat_seconds)
    instances = p.fleet_hosts * p.fleet_domains
    rows = []
    for ph in phases:
        label = f"{ph['consumers']} consumer{'s' if ph['consumers'] > 1 else ''}"
        rows += [
            Row(NAME, f"steady {ph['rate_asked']:,.0f}/s: applied events/s ({label})",
                "events/s", ph["applied_rate"], met=ph["ok"],
                note=f"{ph['journaled']}/{ph['events']} journaled"),
            Row(NAME, f"steady: p99 callback -> committed ({label})", "ms", ph["p99_ms"],
                note=f"p50 {ph['p50_ms']:.1f} ms; the machine's {os.cpu_count()} cores "
                     f"{ph['machine_busy']:.0%} busy"),
            Row(NAME, f"steady: CPU per event over idle, broker ({label})", "us",
                ph["over_idle_cpu_us"]["broker"],
                note=f"PostgreSQL {ph['over_idle_cpu_us']['postgres']:.0f} us, consumers "
                     f"{ph['over_idle_cpu_us']['consumers']:.0f} us, agents "
                     f"{ph['over_idle_cpu_us']['agents']:.0f} us (with idle: broker "
                     f"{ph['cpu_us']['broker']:.0f}, PostgreSQL {ph['cpu_us']['postgres']:.0f}, "
                     f"consumers {ph['cpu_us']['consumers']:.0f}, agents "
                     f"{ph['cpu_us']['agents']:.0f})"),
            Row(NAME, f"drain {ph['drain_events']:,}: applied events/s ({label})", "events/s",
                ph["drain_rate"],
                note=f"CPU per event at full speed: broker "
                     f"{ph['saturated_cpu_us']['broker']:.0f} us, PostgreSQL "
                     f"{ph['saturated_cpu_us']['postgres']:.0f} us, consumers "
                     f"{ph['saturated_cpu_us']['consumers']:.0f} us, agents "
                     f"{ph['saturated_cpu_us']['agents']:.0f} us"),
            Row(NAME, f"consumer peak RSS ({label})", "MB", ph["consumer_rss_mb"]),
        ]
    rows.append(Row(NAME, f"storm: {storm['instances']:,} instances of {storm['hosts']} hosts "
                    "change at once: all right in DB", "s", storm["seconds"], target=3.0,
                    higher_is_better=False, note=f"{storm['consumers']} consumers"))
    sizes = _message_sizes()
    rows.append(Row(NAME, "bytes on the wire of an instance event", "B", sizes["event"],
                    note=f"a heartbeat {sizes['heartbeat']} B, an inventory of 100 "
                         f"{sizes['inventory_of_100']:,} B"))
    rows.append(Row(NAME, f"broker memory per agent connection ({p.fleet_hosts} agents)",
                    "KB", connection_kb, note="the broker's RSS before and after they connected"))
    rows.append(Row(NAME, f"idle, {p.fleet_hosts} agents beating every 10 s: cores used, "
                    "agents", "cores", idle["agents"],
                    note=f"broker {idle['broker']:.3f}, PostgreSQL {idle['postgres']:.3f}, "
                         f"one consumer {idle['consumers']:.3f}"))
    for beat in beats:
        rows.append(Row(NAME, f"heartbeats at {beat['rate']:,.0f}/s, batch_linger "
                        f"{beat['batch_linger']:g}: CPU per heartbeat, broker", "us",
                        beat["cpu_us"]["broker"],
                        note=f"PostgreSQL {beat['cpu_us']['postgres']:.0f} us, consumer "
                             f"{beat['cpu_us']['consumers']:.0f} us, agents "
                             f"{beat['cpu_us']['agents']:.0f} us"))
    rows.append(Row(NAME, f"start inventories ({p.fleet_hosts} x {p.fleet_domains}): "
                    "CPU per entry, broker", "us", inventories["broker"],
                    note=f"PostgreSQL {inventories['postgres']:.0f} us, consumer "
                         f"{inventories['consumers']:.0f} us, agents starting "
                         f"{inventories['agents']:.0f} us"))
    details = {"hosts": p.fleet_hosts, "domains_per_host": p.fleet_domains,
               "instances": instances, "agents_started_in_s": started_in,
               "inventory_cpu_us_per_entry": inventories, "idle_cores": idle,
               "broker_kb_per_connection": connection_kb, "message_bytes": sizes, "heartbeats": beats,
               "phases": phases, "storm": storm}
    return ScenarioResult(NAME, rows, details)


def _together(calls: dict) -> dict:
    """Run each call on a thread of its own; their results by key (the first error
    raised again)."""
    results, errors = {}, []

    def run_one(key, call):
        try:
            results[key] = call()
        except Exception as exc:  # noqa: BLE001 - raised again below
            errors.append(exc)
    threads = [threading.Thread(target=run_one, args=kv) for kv in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _message_sizes() -> dict[str, int]:
    """Bytes on the wire of the agent's own notifications: an instance event, a
    heartbeat, an inventory of 100 domains (what the capacity model sizes queues by)."""
    from lifecycle_common import wire
    from lifecycle_publisher import notifications, translation
    from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
    host, epoch, now = "compute-01234", 1_796_200_000, time.time()
    event = DomainEvent(seq=123_456, occurred_at=now, uuid=str(uuid.UUID(int=1)),
                        name="instance-0000abcd", event=5, detail=0)  # STOPPED, SHUTDOWN
    inventory = Inventory(seq=5, occurred_at=now, reason="periodic", domains=tuple(
        DomainSnapshot(str(uuid.UUID(int=i)), f"instance-{i:08x}", 1, 1) for i in range(100)))
    return {
        "event": len(wire.encode(notifications.instance_notification(
            host, epoch, event, translation.Observed(state=5, reason=1)))),
        "heartbeat": len(wire.encode(notifications.heartbeat_notification(
            host, epoch, 123_456, 10.0, "running", True))),
        "inventory_of_100": len(wire.encode(notifications.inventory_notification(
            host, epoch, inventory))),
    }


def _broker_rss_mb() -> float:
    broker = harness.machine_broker_pid()
    if broker is None:
        raise BenchError("fleet: the machine's RabbitMQ is not running")
    return harness.proc_status(broker).get("VmRSS", 0.0)


def _meter(processes: dict, consumer_pids: list[int]) -> CpuMeter:
    broker = harness.machine_broker_pid()
    if broker is None:
        raise BenchError("fleet: the machine's RabbitMQ is not running")
    return CpuMeter({
        "broker": CpuMeter.of_pids([broker]), "postgres": harness.postgres_cpu_seconds,
        "consumers": CpuMeter.of_pids(consumer_pids),
        "agents": CpuMeter.of_pids([h.pid for h in processes.values()]),
    })


def _per(used: dict[str, float], count: int) -> dict[str, float]:
    """CPU seconds by part -> microseconds per one of ``count``."""
    return {label: seconds / max(1, count) * 1e6 for label, seconds in used.items()}


def _heartbeats(run: Run, engine, topology, url: str, hosts: int, interval: float,
                seconds: float, lingers: tuple[float, ...] = (0.0, 0.02)) -> list[dict]:
    """Agents with one domain each, beating every ``interval`` and doing nothing else,
    into one consumer: the CPU of a heartbeat, which at 10,000 hosts is most messages.
    Once per ``[consumer] batch_linger`` of ``lingers``: a consumer that waits a little
    for a batch to fill pays for fewer transactions."""
    names = [f"{NAME}-beat-h{i:03d}" for i in range(hosts)]
    beats = HostsProcess(run, f"{NAME}-beats", names, 1, topology.exchange,
                         heartbeat_interval=interval, inventory_interval=600.0)
    results = []
    try:
        start = beats.call("start", timeout=300, ready_timeout=240)
        for linger in lingers:
            pipeline, procs = harness.start_consumers(
                run, f"{NAME}-beats-{linger}", topology, url, 1,
                consumer_options={"consumer": {"batch_linger": linger}})
            try:
                harness.wait_for(lambda: harness.caught_up(engine, start["last_seq"]), 120,
                                 "the heartbeat hosts' inventories in the database")
                meter = _meter({"beats": beats}, [proc.pid for proc in procs]).start()
                before = beats.call("stats")["heartbeats"]
                time.sleep(seconds)  # the measured window: the agents beat by themselves
                sent = beats.call("stats")["heartbeats"] - before
                harness.wait_for(lambda: harness.queue_counts(topology.queue)[0] == 0, 60,
                                 "the heartbeats consumed")
                used = meter.stop()
            finally:
                pipeline.stop()
            results.append({"hosts": hosts, "interval": interval, "batch_linger": linger,
                            "heartbeats": sent, "rate": sent / meter.wall,
                            "cpu_seconds": used, "cpu_us": _per(used, sent)})
    finally:
        beats.close()
    return results


def _phase(run: Run, sampler, processes: dict, engine, topology, url: str,
           consumers: int, idle: dict[str, float]) -> dict:
    p = run.profile
    pipeline, procs = harness.start_consumers(run, f"{NAME}-{consumers}", topology, url,
                                              consumers)
    labels = [f"consumer-{NAME}-{consumers}.{i}" for i in range(len(procs))]
    for label, proc in zip(labels, procs):
        sampler.watch(label, proc.pid)
    per_process = p.fleet_rate / len(processes)
    # Warm-up, not measured: a consumer's first batches pay for compiling statements.
    warm = _together({g: (lambda h=h: h.call("steady", timeout=300, rate=per_process,
                                              seconds=2.0)) for g, h in processes.items()})
    expected = {k: v for s in warm.values() for k, v in s["expected_seq"].items()}
    harness.wait_for(lambda: harness.caught_up(engine, expected), 120, "the warm-up committed")
    meter = _meter(processes, [proc.pid for proc in procs]).start()
    t_start = time.time()
    steady = _together({g: (lambda h=h: h.call("steady", timeout=p.fleet_seconds + 300,
                                                rate=per_process, seconds=p.fleet_seconds))
                        for g, h in processes.items()})
    expected = {k: v for s in steady.values() for k, v in s["expected_seq"].items()}
    harness.wait_for(lambda: harness.caught_up(engine, expected), 120, "every event committed")
    used = meter.stop()
    events = sum(s["events"] for s in steady.values())
    lat = _latencies(engine, t_start)
    rss = max(sampler.peak.get(label, 0.0) for label in labels)
    # Drain: what the consumers apply when the queue is full.
    pipeline.stop()
    fill_meter = _meter(processes, []).start()
    fill = _together({g: (lambda h=h: h.call("burst", timeout=600, steps=1, parallel=False,
                                              wait_confirmed=True, confirm_timeout=300.0))
                      for g, h in processes.items()})
    fill_used = fill_meter.stop()
    drain_events = sum(f["events"] for f in fill.values())
    expected = {k: v for f in fill.values() for k, v in f["expected_seq"].items()}
    pipeline, procs = harness.start_consumers(run, f"{NAME}-drain-{consumers}", topology, url,
                                              consumers, wait_consuming=False)
    harness.wait_for(lambda: harness.queue_counts(topology.queue)[1] > 0, 30,
                     "the consumers to consume", interval=0.002)
    drain_meter = _meter(processes, [proc.pid for proc in procs]).start()
    t0 = time.time()
    harness.wait_for(lambda: harness.caught_up(engine, expected), 300, "the queue drained",
                     interval=0.01)
    drain_seconds = time.time() - t0
    drain_used = drain_meter.stop()
    pipeline.stop()
    # At full speed, publishing (fill) and delivering (drain) apart: what one event costs
    # when no part waits for work.
    saturated = _per({label: fill_used[label] + drain_used[label] for label in drain_used},
                     drain_events)
    cpu_us = _per(used, events)
    # What the stream added to the idle fleet (idle consumers: that many idle ones).
    idle_seconds = {label: idle[label] * meter.wall * (consumers if label == "consumers" else 1)
                    for label in used}
    over_idle_us = _per({label: used[label] - idle_seconds[label] for label in used}, events)
    busy = sum(used.values()) / meter.wall / (os.cpu_count() or 1)
    return {"consumers": consumers, "rate_asked": p.fleet_rate, "events": events,
            "seconds": meter.wall, "applied_rate": len(lat) / max(1e-9, _span(steady)),
            "journaled": len(lat), "ok": len(lat) == events,
            "p50_ms": harness.percentile(lat, 0.5), "p99_ms": harness.percentile(lat, 0.99),
            "max_ms": max(lat) if lat else None, "cpu_seconds": used,
            "cpu_share": {label: meter.share(label) for label in used}, "cpu_us": cpu_us,
            "consumer_rss_mb": rss, "drain_events": drain_events,
            "drain_seconds": drain_seconds, "drain_rate": drain_events / drain_seconds,
            "saturated_cpu_us": saturated, "over_idle_cpu_us": over_idle_us,
            "machine_busy": busy}


def _span(steady: dict) -> float:
    return max(s["seconds"] for s in steady.values())


def _latencies(engine, since: float) -> list[float]:
    """Milliseconds from callback to commit of the instance events stamped since
    ``since`` (a wall-clock time)."""
    cutoff = datetime.fromtimestamp(since, timezone.utc).replace(tzinfo=None)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT occurred_at, applied_at FROM journal WHERE host LIKE %s AND "
            "event_type LIKE 'instance.%%' AND occurred_at >= %s", (f"{NAME}-%", cutoff)).all()
    return [(applied - occurred).total_seconds() * 1000 for occurred, applied in rows]


def _storm(run: Run, sampler, processes: dict, names: list[str], engine, topology,
           url: str, consumers: int) -> dict:
    pipeline, procs = harness.start_consumers(run, f"{NAME}-storm", topology, url, consumers)
    try:
        t0 = time.time()
        bursts = _together({g: (lambda h=h: h.call("burst", timeout=300, steps=1, parallel=True,
                                                    wait_confirmed=False, only=names))
                            for g, h in processes.items()})
        # Each domain took one step along its cycle (from wherever the steady stream
        # left it): what libvirt now says is what the database must say.
        libvirt = {}
        for h in processes.values():
            libvirt.update({n: states for n, states in h.call("states")["states"].items()
                            if n in names})
        instances = sum(len(states) for states in libvirt.values())
        harness.wait_for(lambda: _in_step(engine, libvirt), 120,
                         f"all {instances} instances as libvirt has them", interval=0.01)
        took = time.time() - min(b["t_start"] for b in bursts.values())
        emitted = max(b["t_emitted"] for b in bursts.values()) - t0
    finally:
        pipeline.stop()
    return {"hosts": len(names), "instances": instances, "seconds": took,
            "emit_seconds": emitted, "consumers": consumers}


def _in_step(engine, libvirt: dict[str, dict[str, str]]) -> bool:
    """Whether the database shows every domain of these hosts as libvirt has it."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT uuid, host, power_state FROM instances WHERE host = ANY(:names) AND NOT "
            "deleted"), {"names": list(libvirt)}).all()
    have = {(uuid, host, state) for uuid, host, state in rows}
    want = {(uuid, host, state) for host, states in libvirt.items()
            for uuid, state in states.items()}
    return have == want
