"""latency-inprocess: libvirt callback -> committed in the database, per event, at a
steady 1,000 events/s over 20 hosts whose agents share one process with their
in-process test hypervisors (500 domains each) and the load; the consumer is a separate
process on PostgreSQL. The production shape (agents as processes on libvirtd) is
``latency``; this one shows the agents' own cost with the daemon's work in-process.

Each event's latency is the journal's ``applied_at`` minus the payload's
``occurred_at``. ``occurred_at`` is stamped in the agent's libvirt callback;
``applied_at`` is stamped by consumer/store.py inside the applying transaction, just
before its statements run, so the commit itself (a few hundred microseconds on a local
PostgreSQL) is not included. The baseline is the periodic poll (baseline_poll).
"""

from __future__ import annotations

from benchmarks import baseline_poll, harness, latency
from benchmarks.harness import Row, Run, ScenarioResult
from lifecycle_common.wire.vocabulary import INSTANCE_PREFIX

SHAPE = harness.IN_PROCESS  # the agents share one process with their hypervisors
NAME = "latency-inprocess"


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    fleet = harness.start_fleet(run, sampler, NAME, "latip")
    engine = fleet.engine
    steady = fleet.hosts.call("steady", timeout=p.latency_seconds + 120, rate=p.latency_rate,
                        seconds=p.latency_seconds)
    harness.wait_for(lambda: harness.caught_up(engine, steady["expected_seq"]), 60,
                     "every event committed")
    fleet.close()
    lat = [harness.seconds(applied - occurred) * 1000
           for event_type, occurred, applied in harness.journal_rows(engine, "latip-")
           if event_type.startswith(INSTANCE_PREFIX)]
    ok = len(lat) == steady["events"]
    p50, p99, worst = (harness.percentile(lat, 0.5), harness.percentile(lat, 0.99), max(lat))
    poll = baseline_poll.percentiles_ms()
    label = "600 s poll (model)"
    rows = [
        Row(NAME, "p50 callback -> committed", "ms", p50, target=latency.P50_TARGET_MS,
            higher_is_better=False, baseline=poll["p50"], baseline_label=label),
        Row(NAME, "p99 callback -> committed", "ms", p99, target=latency.P99_TARGET_MS,
            higher_is_better=False, baseline=poll["p99"], baseline_label=label),
        Row(NAME, "max callback -> committed", "ms", worst, higher_is_better=False,
            baseline=poll["max"], baseline_label=label),
        Row(NAME, "steady rate achieved / nothing lost", "events/s", steady["rate"],
            met=ok and steady["rate"] >= 0.98 * p.latency_rate,
            note=f"{len(lat)}/{steady['events']} journaled"),
    ]
    details = {"events": steady["events"], "rate": steady["rate"],
               "seconds": steady["seconds"], "pacer_max_behind_s": steady["max_behind_s"],
               "p50_ms": p50, "p90_ms": harness.percentile(lat, 0.9), "p99_ms": p99,
               "p999_ms": harness.percentile(lat, 0.999), "max_ms": worst,
               "mean_ms": sum(lat) / len(lat) if lat else None, "baseline_model": poll}
    return ScenarioResult(NAME, rows, details)
