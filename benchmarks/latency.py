"""latency, in the production shape: libvirt callback -> committed in the database, per
event, at a steady 1,000 events/s over ``latency_hosts`` compute hosts, each an agent
running as the real console script on a libvirtd of its own (benchmarks.daemons, 500
running domains each), the load from ``latency_loaders`` separate processes pacing
state changes through the daemons' sockets, and the consumer a separate process on
PostgreSQL.

Each event's latency is the journal's ``applied_at`` minus the payload's
``occurred_at``: ``occurred_at`` is stamped in the agent's libvirt callback,
``applied_at`` by consumer/store.py inside the applying transaction (the commit itself,
a few hundred microseconds on a local PostgreSQL, is not included). The baseline is the
periodic poll (baseline_poll). The limit of the agent's CPU per event is measured in
the same run, before the agents start: a bare libvirt-python lifecycle callback
(benchmarks.bare_callback: subscribe, count, nothing else) on each of the same daemons,
under the same load at the same rate; no agent can be handed an event for less. A second, shorter pass adds a spy queue on the same
exchange that times each event's arrival at the broker's side (benchmarks.spy_queue),
splitting the latency into the agent's and broker's share and the consumer's; its own
CPU would weigh on the measure, so the measure is the first pass, without it.
"""

from __future__ import annotations

import datetime
import functools
import os
import time

from benchmarks import baseline_poll, daemons, harness
from benchmarks.harness import ModuleProcess, Row, Run, ScenarioResult
from lifecycle_common.wire.vocabulary import INSTANCE_PREFIX

NAME = "latency"
PREFIX = "lat-h"
# Targets: callback -> committed, ms; and the agent's CPU per event at the steady rate
# (the agents' CPU over the measured window / the events in it), us.
P50_TARGET_MS, P99_TARGET_MS = 3.0, 15.0
AGENT_CPU_TARGET_US = 100.0


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    names = [f"{PREFIX}{i:02d}" for i in range(p.latency_hosts)]
    url, engine = run.main_database()
    topology = run.topology(NAME)
    hosts = daemons.start_daemons(run, names, p.domains_per_host)
    bare = _bare_steady(run, hosts, p.latency_seconds)  # the limit, before any agent
    pipeline, consumer = harness.start_consumer(run, NAME, topology, url)
    sampler.watch(f"consumer-{NAME}", consumer.pid)
    agents = []
    for daemon in hosts:
        proc = pipeline.start_agent(daemon.host, daemon.uri, wait=False, inventory_interval=0)
        sampler.watch(f"agent-{daemon.host}", proc.pid)
        agents.append(proc.pid)
    harness.wait_for(lambda: harness.caught_up(engine, {n: 1 for n in names}), 180,
                     "every agent's start inventory in the database")
    sources = {"machine (all cores)": harness.machine_cpu_seconds,
               "agents": harness.CpuMeter.of_pids(agents),
               **{f"agents' {thread}": functools.partial(harness.thread_cpu_seconds, agents,
                                                         thread)
                  for thread in harness.AGENT_THREADS},
               "libvirtds": harness.CpuMeter.of_pids([d.pid for d in hosts]),
               "consumer": harness.CpuMeter.of_pids([consumer.pid]),
               "postgres": harness.postgres_cpu_seconds}
    broker_pid = harness.machine_broker_pid()
    if broker_pid is not None:
        sources["broker"] = harness.CpuMeter.of_pids([broker_pid])

    # The measure, then a shorter pass with a spy queue that splits the latency at the
    # broker (the spy's own CPU then counts on this machine: not in the measure).
    measured = _steady(run, engine, hosts, sources, p.latency_seconds, spy_topology=None)
    split = _steady(run, engine, hosts, sources, p.latency_seconds / 2, spy_topology=topology)
    for daemon in hosts:
        pipeline.stop_process(f"agent-{daemon.host}")
    lat = measured["latencies_ms"]
    ok = len(lat) == measured["events"]
    p50, p99, worst = (harness.percentile(lat, 0.5), harness.percentile(lat, 0.99), max(lat))
    poll = baseline_poll.percentiles_ms()
    label = "600 s poll (model)"
    shape = f"{len(names)} agent processes on {len(names)} libvirtds"
    spied = split["spy"]
    per_host = p.latency_rate / len(names)
    rows = [
        Row(NAME, f"p50 callback -> committed ({shape})", "ms", p50, target=P50_TARGET_MS,
            higher_is_better=False, baseline=poll["p50"], baseline_label=label),
        Row(NAME, f"p99 callback -> committed ({shape})", "ms", p99, target=P99_TARGET_MS,
            higher_is_better=False, baseline=poll["p99"], baseline_label=label),
        Row(NAME, f"max callback -> committed ({shape})", "ms", worst, higher_is_better=False,
            baseline=poll["max"], baseline_label=label),
        Row(NAME, f"CPU per event: the agent, at {per_host:g} events/s on each of "
            f"{len(names)} hosts", "us", measured["cpu_us_per_event"]["agents"],
            target=AGENT_CPU_TARGET_US, higher_is_better=False,
            limit=bare["cpu_us_per_event"], limit_label="bare callback, same daemons and rate",
            note=f"{len(names)} agents: {measured['cpu_s']['agents']:.2f} s of CPU over "
                 f"{measured['events']} events"),
        *[Row(NAME, f"CPU per event: the agents' {thread} threads", "us",
              measured["cpu_us_per_event"][f"agents' {thread}"], higher_is_better=False,
              **({"limit": bare["cpu_us_per_event"], "limit_label": "bare callback"}
                 if thread == "libvirt-events" else {}))
          for thread in harness.AGENT_THREADS],
        Row(NAME, "cores busy on the machine during the steady load", "cores",
            measured["cores"]["machine (all cores)"], higher_is_better=False,
            limit=float(os.cpu_count() or 1), limit_label="cores here"),
        Row(NAME, "steady rate achieved / nothing lost", "events/s", measured["rate"],
            met=ok and measured["rate"] >= 0.98 * p.latency_rate,
            note=f"{len(lat)}/{measured['events']} journaled"),
        Row(NAME, "profile pass, with a spy queue: p50 callback -> committed", "ms",
            harness.percentile(split["latencies_ms"], 0.5), higher_is_better=False),
        Row(NAME, "profile pass: p50 callback -> in the broker (the spy's copy)", "ms",
            spied["p50_ms"], higher_is_better=False),
        Row(NAME, "profile pass: p99 callback -> in the broker (the spy's copy)", "ms",
            spied["p99_ms"], higher_is_better=False),
    ]
    details = {"hosts": len(names), "loaders": p.latency_loaders, "events": measured["events"],
               "rate": measured["rate"], "seconds": measured["seconds"],
               "pacer_max_behind_s": measured["max_behind_s"],
               "p50_ms": p50, "p90_ms": harness.percentile(lat, 0.9), "p99_ms": p99,
               "p999_ms": harness.percentile(lat, 0.999), "max_ms": worst,
               "mean_ms": sum(lat) / len(lat) if lat else None, "baseline_model": poll,
               "cores_used": measured["cores"], "cpu_us_per_event": measured["cpu_us_per_event"],
               "limit_bare_callback": bare,
               "profile_pass": {k: v for k, v in split.items() if k != "latencies_ms"}}
    return ScenarioResult(NAME, rows, details)


def _loaders(run: Run, hosts: list, seconds: float, start_at: float) -> list[ModuleProcess]:
    """``latency_loaders`` load processes pacing ``latency_rate`` events/s between them
    over the hosts' domains for ``seconds``, from ``start_at``."""
    p = run.profile
    return [ModuleProcess(run, "libvirt_load", {
        "targets": [{"uri": d.uri, "host": d.host, "first": 0, "count": p.domains_per_host}
                    for d in hosts[i::p.latency_loaders]],
        "rate": p.latency_rate / p.latency_loaders, "seconds": seconds,
        "start_at": start_at}, f"{NAME}-load-{i}-{int(start_at)}")
        for i in range(p.latency_loaders)]


def _bare_steady(run: Run, hosts: list, seconds: float) -> dict:
    """The limit: a bare callback (benchmarks.bare_callback) on each daemon, under the
    same steady load as the agents'; their CPU over the load's time / the events."""
    start_at = time.time() + 3.0
    until = start_at + seconds + 3.0  # the last events reach the callbacks
    bare = [ModuleProcess(run, "bare_callback", {
        "uri": d.uri, "expected": None, "timeout": until - time.time()},
        f"{NAME}-bare-{d.host}") for d in hosts]
    for proc in bare:
        proc.line(30)  # subscribed
    meter = harness.CpuMeter({"bare": harness.CpuMeter.of_pids([b.pid for b in bare])})
    loaders = _loaders(run, hosts, seconds, start_at)
    time.sleep(max(0.0, start_at - time.time()))
    meter.start()
    results = [proc.line(seconds + 120) for proc in loaders]
    used = meter.stop()["bare"]
    events = sum(r["events"] for r in results)
    seen = sum(proc.line(until - time.time() + 30)["events"] for proc in bare)
    for proc in bare:
        proc.wait()
    if seen < events:
        raise harness.BenchError(f"latency: the bare callbacks saw {seen} of {events} events")
    return {"events": events, "seen": seen, "cpu_s": used,
            "cpu_us_per_event": round(used / events * 1e6, 1)}


def _steady(run: Run, engine, hosts: list, sources: dict, seconds: float,
            spy_topology) -> dict:
    """``latency_rate`` events/s for ``seconds`` from the load processes; every event
    committed, the latencies of this pass, the cores each part used and its CPU per
    event (its CPU seconds while the load ran / the events the load made), and with
    ``spy_topology`` the spy queue's split."""
    p = run.profile
    before = harness.journal_count(engine, PREFIX)
    spy = None
    if spy_topology is not None:
        spy = ModuleProcess(run, "spy_queue", {
            "rabbitmq_url": harness.RABBITMQ_URL, "exchange": spy_topology.exchange,
            "routing_key": harness.ROUTING_KEY, "expected": int(p.latency_rate * seconds),
            "timeout": seconds + 120}, f"{NAME}-spy")
        spy.line(30)
        sources = dict(sources, spy=harness.CpuMeter.of_pids([spy.pid]))
    meter = harness.CpuMeter(sources)
    start_at = time.time() + 3.0
    loaders = _loaders(run, hosts, seconds, start_at)
    time.sleep(max(0.0, start_at - time.time()))
    meter.start()
    results = [proc.line(seconds + 120) for proc in loaders]
    used = meter.stop()
    used["loaders"] = sum(r["cpu_s"] for r in results)
    events = sum(r["events"] for r in results)
    t_start = min(r["t_start"] for r in results)
    t_end = max(r["t_end"] for r in results)
    harness.wait_for(lambda: harness.journal_count(engine, PREFIX) >= before + events, 60,
                     "every event committed", interval=0.1)
    since = datetime.datetime.fromtimestamp(t_start - 1.0, datetime.timezone.utc).replace(tzinfo=None)
    lat = [harness.seconds(applied - occurred) * 1000
           for event_type, occurred, applied in harness.journal_rows(engine, PREFIX)
           if event_type.startswith(INSTANCE_PREFIX) and occurred >= since]
    return {"events": events, "seconds": t_end - t_start, "rate": events / (t_end - t_start),
            "max_behind_s": max(r["max_behind_s"] for r in results),
            "cores": {part: round(used_s / meter.wall, 2) for part, used_s in used.items()},
            "cpu_s": used,
            "cpu_us_per_event": {part: round(used_s / events * 1e6, 1)
                                 for part, used_s in used.items() if part != "machine (all cores)"},
            "latencies_ms": lat, "journaled": len(lat),
            "spy": spy.line(60) if spy is not None else None}
