"""publish-inprocess: events/s from the libvirt callback to broker-confirmed, one agent
watching 2,000 domains of an in-process test hypervisor (``test:///<node file>``) that
the load changes, in the agent's own process and on its GIL, as fast as libvirt emits:
the agent's own cost per event, without a daemon. The production shape (the agent as a
process on libvirtd, the load from other processes) is ``publish``. The baseline is
oslo_messaging.Notifier.info per event on the same kind of hypervisor.

A warm-up burst (one step of every domain, 2,000 events) goes first, unmeasured.
Nothing lost: every event libvirt emitted must be written to the outbox, confirmed by
the broker, removed from the outbox and sitting in the queue.
"""

from __future__ import annotations

from benchmarks import harness
from benchmarks.harness import BenchError, HostsProcess, Row, Run, ScenarioResult

SHAPE = harness.IN_PROCESS  # the agents share one process with their hypervisors
NAME = "publish-inprocess"
HOST = "publish-h00"


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    topology = run.topology(NAME)  # a bound queue, so that every message is routable
    hosts = HostsProcess(run, "publish-agent", [HOST], p.publish_domains, topology.exchange,
                         heartbeat_interval=3600.0)
    sampler.watch("agent", hosts.pid)
    hosts.call("start", timeout=120)
    # Warm-up: one step of every domain (the outbox file and the broker's queue grow to
    # size, allocators and caches settle), not measured but counted.
    start = hosts.call("burst", timeout=180, steps=1, parallel=False, wait_confirmed=True,
                       confirm_timeout=120.0)
    burst = hosts.call("burst", timeout=180, steps=p.publish_steps, parallel=False,
                       wait_confirmed=True, confirm_timeout=120.0)
    events = burst["events"]
    if burst["t_confirmed"] is None:
        raise BenchError(f"publish: only {burst['confirmed'] - start['confirmed']} of "
                         f"{events} events confirmed within 120 s")
    elapsed = burst["t_confirmed"] - burst["t_start"]
    ours = events / elapsed
    # Nothing lost: emitted == stamped == written == confirmed, outbox empty, all queued.
    stamped = burst["last_seq"][HOST] - start["last_seq"][HOST]
    written = burst["written"] - start["written"]
    confirmed = burst["confirmed"] - start["confirmed"]
    queued, _ = harness.queue_counts(topology.queue)
    # + the warm-up's events and the start inventory (confirmed by then) and heartbeat
    expected_queued = events + start["confirmed"] + 1
    lost = {"emitted": events, "stamped": stamped, "written": written, "confirmed": confirmed,
            "outbox_pending": burst["outbox_pending"], "queued": queued,
            "queued_expected": expected_queued}
    ok = (stamped == written == confirmed == events and burst["outbox_pending"] == 0
          and queued == expected_queued)
    hosts.close()

    base = harness.run_baseline(run, "baseline_publish", {
        "workdir": run.workdir, "domains": p.publish_domains,
        "events": p.baseline_publish_events, "exchange": run.name(NAME, "baseline"),
        "topic": run.name(NAME, "baseline"), "transport_url": harness.TRANSPORT_URL,
        "time_limit": 60.0}, timeout=240)
    run.track(queues=[f"{run.name(NAME, 'baseline')}.info"],
              exchanges=[run.name(NAME, "baseline")])
    base_ok = base["sent"] == base["events"]
    if base_ok:
        base_queued, _ = harness.queue_counts(f"{run.name(NAME, 'baseline')}.info")
        base_ok = base_queued == base["events"] + base["warmup_messages"]
        base["queued"] = base_queued
    rows = [
        Row(NAME, "events/s, callback -> broker-confirmed", "events/s", ours, target=10_000,
            baseline=base["rate"], baseline_label="oslo Notifier.info per event"),
        Row(NAME, "nothing lost (confirmed & queued = emitted)", "", 1.0 if ok else 0.0,
            met=ok, note=f"{confirmed}/{events} confirmed, {queued - (expected_queued - events)} queued"),
    ]
    details = {"events": events, "seconds": elapsed, "emit_seconds": burst["t_emitted"] - burst["t_start"],
               "at_emitted": burst["at_emitted"],
               "counts": lost, "baseline": base, "baseline_nothing_lost": base_ok}
    return ScenarioResult(NAME, rows, details)
