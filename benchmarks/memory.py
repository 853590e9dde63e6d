"""memory: peak RSS of the agent (2,000 domains) and of the consumer during the runs,
and RSS over a soak at a steady 1,000 events/s (--soak-seconds, default 300).

RSS comes from /proc/<pid>/status (VmHWM, the kernel's peak, and VmRSS, sampled every
0.25 s). The agent is one agent process (``benchmarks.hosts``) watching 2,000 domains:
the publish scenario's and the soak's; the libvirt test hypervisor it watches lives in
the same process, so its 2,000 domains count against the agent. The consumer is every
``lifecycle-consumer`` process of the run. "Flat" means the RSS at the end of the soak
is within 5 MB of the RSS after its first tenth (warm-up).
"""

from __future__ import annotations

import statistics

from benchmarks import harness
from benchmarks.harness import HostsProcess, Row, Run, ScenarioResult

SHAPE = harness.IN_PROCESS  # the agents share one process with their hypervisors
NAME = "memory"
FLAT_MB = 5.0


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    url, engine = run.main_database()
    topology = run.topology("soak")
    pipeline, proc = harness.start_consumer(run, "soak", topology, url)
    sampler.watch("consumer-soak", proc.pid)
    hosts = HostsProcess(run, "soak-agent", ["soak-h00"], p.publish_domains, topology.exchange)
    sampler.watch("agent-soak", hosts.pid)
    start = hosts.call("start", timeout=120)
    harness.wait_for(lambda: harness.caught_up(engine, start["last_seq"]), 60,
                     "the start inventory in the database")
    steady = hosts.call("steady", timeout=p.soak_seconds + 120, rate=p.soak_rate,
                        seconds=p.soak_seconds)
    harness.wait_for(lambda: harness.caught_up(engine, steady["expected_seq"]), 60,
                     "every soak event committed")
    sampler.sample()
    hosts.close()
    pipeline.stop_process("consumer")
    journaled = harness.journal_count(engine, "soak-")

    growth = {label: _growth(sampler.series[label]) for label in ("agent-soak", "consumer-soak")}
    agent_peak = max(v for k, v in sampler.peak.items() if k in ("agent", "agent-soak"))
    consumer_peaks = {k: v for k, v in sampler.peak.items() if k.startswith("consumer")}
    rows = [
        Row(NAME, "agent peak RSS (2,000 domains)", "MB", agent_peak, target=80,
            higher_is_better=False),
        Row(NAME, "consumer peak RSS", "MB", max(consumer_peaks.values()), target=150,
            higher_is_better=False, note=max(consumer_peaks, key=consumer_peaks.get)),
        Row(NAME, f"agent RSS growth over {p.soak_seconds:.0f}s soak", "MB",
            growth["agent-soak"]["growth_mb"], target=FLAT_MB, higher_is_better=False),
        Row(NAME, f"consumer RSS growth over {p.soak_seconds:.0f}s soak", "MB",
            growth["consumer-soak"]["growth_mb"], target=FLAT_MB, higher_is_better=False),
        Row(NAME, "soak rate / nothing lost", "events/s", steady["rate"],
            met=journaled == steady["events"] + 1 and steady["rate"] >= 0.98 * p.soak_rate,
            note=f"{journaled - 1}/{steady['events']} journaled"),
    ]
    details = {"peaks_mb": dict(sampler.peak), "soak": growth, "soak_events": steady["events"],
               "soak_rate": steady["rate"], "soak_seconds": steady["seconds"],
               "series_mb": {k: _thin(v) for k, v in sampler.series.items()
                             if k in ("agent-soak", "consumer-soak")}}
    return ScenarioResult(NAME, rows, details)


def _growth(series: list[tuple[float, float]]) -> dict:
    """RSS after warm-up (median of the second tenth) against the end (median of the
    last tenth), and the slope of a least-squares line over the rest."""
    if len(series) < 20:
        return {"growth_mb": None, "slope_mb_per_min": None}
    tenth = len(series) // 10
    start = statistics.median(v for _, v in series[tenth:2 * tenth])
    end = statistics.median(v for _, v in series[-tenth:])
    rest = series[tenth:]
    t0 = rest[0][0]
    xs = [t - t0 for t, _ in rest]
    ys = [v for _, v in rest]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
    return {"growth_mb": end - start, "after_warmup_mb": start, "end_mb": end,
            "slope_mb_per_min": slope * 60, "samples": len(series)}


def _thin(series: list[tuple[float, float]], points: int = 120) -> list[tuple[float, float]]:
    if not series:
        return []
    step = max(1, len(series) // points)
    t0 = series[0][0]
    return [(round(t - t0, 2), round(v, 2)) for t, v in series[::step]]
