"""publish, in the production shape: events/s from the libvirt callback to
broker-confirmed, with the agent as the real console script (``lifecycle-agent``) on a
libvirtd of the run's own (``test+unix:///default?socket=...``, see benchmarks.daemons)
holding 2,000 running domains, and the load from ``publish_loaders`` separate processes
changing those domains through the daemon as fast as it answers.

Beside it, in the same run, on the same daemon under the same load:
- the limit: a bare libvirt-python callback that counts events and does nothing else
  (benchmarks.bare_callback): no agent can be handed more;
- the stock way: ``oslo_messaging.Notifier.info`` per event (benchmarks.baseline_publish).

Each measure runs the same load: every domain takes ``publish_steps`` steps of the
cycle (suspend, resume, destroy, create), so the domains end as they began. The clock
runs from the loaders' start to the last event received (the limit), sent and
confirmed (the Notifier), or confirmed by the broker and in the queue (ours, read from
the queue and then from the agent's own /metrics). Nothing lost: the agent wrote,
confirmed and queued every event, and its outbox is empty.
"""

from __future__ import annotations

import functools
import time

from benchmarks import daemons, harness
from benchmarks.harness import BenchError, ModuleProcess, Row, Run, ScenarioResult
from lab.pipeline import Pipeline

NAME = "publish"
HOST = "pub-h00"
# Targets: ours at 0.9 of the bare callback's rate; the agent's CPU per event in the
# burst (its utime + stime from /proc over the load / the events), us.
RATE_TARGET_OF_LIMIT = 0.9
AGENT_CPU_TARGET_US = 40.0


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    topology = run.topology(NAME)  # a bound queue, so that every message is routable
    [daemon] = daemons.start_daemons(run, [HOST], p.publish_domains)
    sampler.watch("libvirtd-publish", daemon.pid)
    events = p.publish_steps * p.publish_domains

    limit = _bare_callback(run, daemon, events)
    ours = _agent(run, sampler, daemon, topology, events)
    stock = _notifier(run, daemon, events)

    rows = [
        Row(NAME, "events/s, callback -> broker-confirmed", "events/s", ours["rate"],
            target_of_limit=RATE_TARGET_OF_LIMIT, limit=limit["rate"],
            limit_label="bare callback",
            baseline=stock["rate"], baseline_label="oslo Notifier.info per event"),
        Row(NAME, "nothing lost (written, confirmed & queued = emitted)", "",
            1.0 if ours["ok"] else 0.0, met=ours["ok"],
            note=f"{ours['confirmed']}/{events} confirmed, {ours['queued']} queued"),
        Row(NAME, "load: events/s the loaders drove with the agent attached", "events/s",
            ours["load_rate"], limit=limit["load_rate"], limit_label="with the bare callback"),
    ]
    for part, label in (("subscriber", "the agent"), ("libvirtd", "libvirtd"),
                        ("loaders", "the load processes"), ("broker", "RabbitMQ")):
        if part in ours["cpu_us_per_event"]:
            rows.append(Row(NAME, f"CPU per event: {label}, while the agent runs", "us",
                            ours["cpu_us_per_event"][part], higher_is_better=False,
                            target=AGENT_CPU_TARGET_US if part == "subscriber" else None,
                            limit=limit["cpu_us_per_event"].get(part),
                            limit_label="with the bare callback",
                            baseline=stock["cpu_us_per_event"].get(part),
                            baseline_label="with Notifier.info"))
    for thread in harness.AGENT_THREADS:
        rows.append(Row(NAME, f"CPU per event: the agent's {thread} thread", "us",
                        ours["cpu_us_per_event"][f"subscriber's {thread}"],
                        higher_is_better=False,
                        **({"limit": limit["cpu_us_per_event"][f"subscriber's {thread}"],
                            "limit_label": "the bare callback's"}
                           if thread == "libvirt-events" else {})))
    details = {"events": events, "loaders": p.publish_loaders, "domains": p.publish_domains,
               "limit": limit, "ours": ours, "notifier": stock}
    return ScenarioResult(NAME, rows, details)


def _loaders(run: Run, daemon: daemons.Daemon, label: str) -> tuple[list[ModuleProcess], float]:
    """The load processes, each on its share of the domains, all starting together at
    the returned wall-clock time."""
    p = run.profile
    start_at = time.time() + 3.0  # time to start, connect and look their domains up
    share = -(-p.publish_domains // p.publish_loaders)
    procs = []
    for i in range(p.publish_loaders):
        first = i * share
        count = min(share, p.publish_domains - first)
        procs.append(ModuleProcess(run, "libvirt_load", {
            "targets": [{"uri": daemon.uri, "host": daemon.host, "first": first,
                         "count": count}],
            "steps": p.publish_steps, "start_at": start_at}, f"{label}-load-{i}"))
    return procs, start_at


def _cpu(daemon: daemons.Daemon, subscriber_pid: int) -> harness.CpuMeter:
    """CPU seconds of the daemon, the subscriber (agent, bare callback or Notifier) and
    the broker while the load runs, and of the subscriber's threads by name (the bare
    callback runs on a ``libvirt-events`` thread too); the loaders report their own."""
    sources = {"libvirtd": harness.CpuMeter.of_pids([daemon.pid]),
               "subscriber": harness.CpuMeter.of_pids([subscriber_pid]),
               **{f"subscriber's {thread}": functools.partial(
                   harness.thread_cpu_seconds, [subscriber_pid], thread)
                  for thread in harness.AGENT_THREADS}}
    broker_pid = harness.machine_broker_pid()
    if broker_pid is not None:
        sources["broker"] = harness.CpuMeter.of_pids([broker_pid])
    return harness.CpuMeter(sources).start()


def _us_per_event(meter: harness.CpuMeter, load: dict, events: int) -> dict:
    used = dict(meter.stop(), loaders=load["cpu_s"])
    return {part: round(seconds / events * 1e6, 1) for part, seconds in used.items()}


def _load_results(loaders: list[ModuleProcess], timeout: float) -> dict:
    results = [proc.line(timeout) for proc in loaders]
    for proc in loaders:
        proc.wait()
    t_start = min(r["t_start"] for r in results)
    t_end = max(r["t_end"] for r in results)
    events = sum(r["events"] for r in results)
    return {"events": events, "t_start": t_start, "t_end": t_end,
            "rate": events / (t_end - t_start), "cpu_s": sum(r["cpu_s"] for r in results),
            "late_start_s": max(r["t_start"] for r in results) - t_start}


def _under_load(run: Run, daemon: daemons.Daemon, subscriber: ModuleProcess,
                events: int) -> tuple[dict, dict, dict]:
    """The load, once ``subscriber`` (a process that says ready, then its result) is
    subscribed: its result, the loaders' and the CPU per event of each part."""
    subscriber.line(120)  # subscribed
    meter = _cpu(daemon, subscriber.pid)
    loaders, _ = _loaders(run, daemon, subscriber.label)
    load = _load_results(loaders, 300)
    got = subscriber.line(320)
    cpu = _us_per_event(meter, load, events)
    subscriber.wait()
    return got, load, cpu


def _bare_callback(run: Run, daemon: daemons.Daemon, events: int) -> dict:
    bare = ModuleProcess(run, "bare_callback", {"uri": daemon.uri, "expected": events,
                                                "timeout": 300, "linger": 2.0},
                         f"{NAME}-bare")
    got, load, cpu = _under_load(run, daemon, bare, events)
    if got["events"] != events:
        raise BenchError(f"publish: the bare callback saw {got['events']} of {events} events")
    return {"events": got["events"], "seconds": got["t_last"] - load["t_start"],
            "rate": events / (got["t_last"] - load["t_start"]), "load_rate": load["rate"],
            "cpu_us_per_event": cpu, "load": load}


def _agent(run: Run, sampler: harness.RssSampler, daemon: daemons.Daemon, topology,
           events: int) -> dict:
    pipeline = Pipeline(f"{run.workdir}/{NAME}-agent", exchange=topology.exchange,
                        queue=topology.queue, heartbeat_interval=3600.0)
    run.on_cleanup(pipeline.stop)
    agent = f"agent-{HOST}"
    proc = pipeline.start_agent(HOST, daemon.uri, wait=False, inventory_interval=0)
    sampler.watch("agent-publish", proc.pid)
    harness.wait_for(lambda: _scrape(pipeline, agent).get("lifecycle_agent_confirms_total", 0) >= 1,
                     60, "the agent's start inventory confirmed")
    before = _scrape(pipeline, agent)
    queued_before, _ = harness.queue_counts(topology.queue)

    meter = _cpu(daemon, proc.pid)
    loaders, _ = _loaders(run, daemon, f"{NAME}-agent")
    # Poll the broker, not the agent, while it works: a scrape would take its CPU.
    harness.wait_for(lambda: harness.queue_counts(topology.queue)[0] >= queued_before + events,
                     300, "every event in the queue", interval=0.005)
    target = before["lifecycle_agent_confirms_total"] + events
    after = harness.wait_for(
        lambda: (m := _scrape(pipeline, agent))["lifecycle_agent_confirms_total"] >= target and m,
        60, "every event confirmed", interval=0.005)
    t_done = time.time()
    cpu_meter_stopped = meter.stop()
    # Confirmed rows leave the outbox in batches (publisher.DELETE_INTERVAL).
    emptied = harness.wait_for(
        lambda: (m := _scrape(pipeline, agent))["lifecycle_agent_outbox_rows"] == 0 and m,
        30, "the agent's outbox to empty", interval=0.05)
    load = _load_results(loaders, 60)
    cpu = {part: round(seconds / events * 1e6, 1)
           for part, seconds in dict(cpu_meter_stopped, loaders=load["cpu_s"]).items()}
    queued = harness.queue_counts(topology.queue)[0] - queued_before
    written = _events_written(after) - _events_written(before)
    confirmed = after["lifecycle_agent_confirms_total"] - before["lifecycle_agent_confirms_total"]
    status = pipeline.stop_process(agent)
    ok = written == confirmed == queued == events and status == 0
    return {"events": events, "seconds": t_done - load["t_start"],
            "rate": events / (t_done - load["t_start"]), "load_rate": load["rate"],
            "written": written, "confirmed": confirmed, "queued": queued,
            "outbox_rows": emptied["lifecycle_agent_outbox_rows"], "exit_status": status,
            "ok": ok, "cpu_us_per_event": cpu, "load": load}


def _scrape(pipeline: Pipeline, name: str) -> dict[str, float]:
    try:
        return pipeline.scrape(name)
    except OSError:  # not listening yet
        return {}


def _events_written(scraped: dict[str, float]) -> float:
    return sum(v for k, v in scraped.items() if k.startswith("lifecycle_agent_events_total{"))


def _notifier(run: Run, daemon: daemons.Daemon, events: int) -> dict:
    exchange = run.name(NAME, "baseline")
    run.track(queues=[f"{exchange}.info"], exchanges=[exchange])
    base = ModuleProcess(run, "baseline_publish", {
        "uri": daemon.uri, "events": events, "exchange": exchange, "topic": exchange,
        "transport_url": harness.TRANSPORT_URL, "time_limit": 240.0}, f"{NAME}-notifier")
    got, load, cpu = _under_load(run, daemon, base, events)  # ready: its exchange exists
    seconds = got["t_last"] - load["t_start"]
    queued, _ = harness.queue_counts(f"{exchange}.info")
    return {"events": events, "sent": got["sent"], "seconds": seconds,
            "rate": got["sent"] / seconds, "queued": queued - got["warmup_messages"],
            "load_rate": load["rate"], "cpu_us_per_event": cpu}
