"""storm: 10,000 instances over 20 hosts change state at once; the time until every
one of them is right in the database.

20 agents on their own test hypervisors, 500 running domains each, all in the database
through their start inventories; then one thread per host, released together, suspends
all 500 of its domains. The clock runs from that release to the moment a query of the
database finds all 10,000 paused (polled every 10 ms).
"""

from __future__ import annotations

import time

from benchmarks import harness
from benchmarks.harness import Row, Run, ScenarioResult

SHAPE = harness.IN_PROCESS  # the agents share one process with their hypervisors
NAME = "storm"


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    instances = p.hosts * p.domains_per_host
    fleet = harness.start_fleet(run, sampler, NAME, "storm")
    engine, hosts, names = fleet.engine, fleet.hosts, fleet.names
    if harness.instance_states(engine, "storm-") != {"running": instances}:
        raise harness.BenchError("storm: not every instance is running before the storm")
    burst = hosts.call("burst", timeout=120, steps=1, parallel=True, wait_confirmed=False)
    state = burst["expected_state"]
    harness.wait_for(lambda: harness.caught_up(engine, burst["expected_seq"]), 60,
                     "every event committed", interval=0.01)
    t_done = time.time()
    states = harness.instance_states(engine, "storm-")
    if states != {state: instances}:
        raise harness.BenchError(f"storm: the database shows {states}, not {instances} {state}")
    journaled = harness.journal_count(engine, "storm-")
    fleet.close()
    took = t_done - burst["t_start"]
    rows = [Row(NAME, f"{instances:,} instances change at once: all right in DB", "s", took,
                target=3.0, higher_is_better=False,
                note=f"libvirt emitted all in {burst['t_emitted'] - burst['t_start']:.2f}s")]
    details = {"instances": instances, "seconds": took,
               "emit_seconds": burst["t_emitted"] - burst["t_start"],
               "journaled": journaled, "expected_journaled": instances + 2 * len(names)}
    return ScenarioResult(NAME, rows, details)
