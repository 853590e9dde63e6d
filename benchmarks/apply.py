"""apply: events/s from a full queue into PostgreSQL, committed and acknowledged;
10,000 instances over 20 hosts. The baseline is a stock oslo.messaging notification
listener committing one event per transaction.

The queue is filled through the real path: 20 agents (``benchmarks.hosts``), each on
its own test hypervisor with 500 running domains, publish their start inventories and
then every domain's suspend, resume, destroy and create. Only then does the consumer
start, as a separate process; the clock runs from the moment it consumes to the moment
every event is in the journal. A copy of everything goes to a second queue, from which
the baseline takes its messages.
"""

from __future__ import annotations

import time

from benchmarks import harness
from benchmarks.harness import BenchError, HostsProcess, Row, Run, ScenarioResult

NAME = "apply"


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    url, engine = run.main_database()
    topology = run.topology(NAME)
    copy = run.extra_queue(topology.exchange, run.name(NAME, "copy"))
    names = [f"{NAME}-h{i:02d}" for i in range(p.hosts)]
    hosts = HostsProcess(run, "apply-hosts", names, p.domains_per_host, topology.exchange,
                         heartbeat_interval=3600.0)
    start = hosts.call("start", timeout=180)
    fill = hosts.call("burst", timeout=600, steps=p.apply_steps, parallel=False,
                      wait_confirmed=True, confirm_timeout=300.0)
    if fill["t_confirmed"] is None:
        raise BenchError("apply: the agents did not get every event confirmed within 300 s")
    hosts.close()  # each agent adds its farewell heartbeat
    events = fill["events"]
    sequenced = events + len(names)  # + one start inventory per host
    queued, _ = harness.queue_counts(topology.queue)
    expected_queued = sequenced + 2 * len(names)  # + a heartbeat at start and at stop
    if queued != expected_queued:
        raise BenchError(f"apply: {queued} messages in the queue, expected {expected_queued}")

    pipeline, proc = harness.start_consumer(run, NAME, topology, url, wait_consuming=False)
    sampler.watch("consumer-apply", proc.pid)
    harness.wait_for(lambda: harness.queue_counts(topology.queue)[1] > 0, 30,
                     "the consumer to consume", interval=0.002)
    t0 = time.time()
    harness.wait_for(lambda: harness.caught_up(engine, fill["expected_seq"]), 300,
                     "every event committed", interval=0.01)
    t1 = time.time()
    harness.wait_for(lambda: harness.queue_counts(topology.queue)[0] == 0, 30,
                     "the queue to be empty")
    pipeline.stop_process("consumer")
    left, _ = harness.queue_counts(topology.queue)  # unacked messages would be back
    journaled = harness.journal_count(engine, f"{NAME}-")
    states = harness.instance_states(engine, f"{NAME}-")
    instances = p.hosts * p.domains_per_host
    ok = left == 0 and journaled == sequenced and states == {fill["expected_state"]: instances}
    ours = events / (t1 - t0)

    base = harness.run_baseline(run, "baseline_apply", {
        "copy_queue": copy, "exchange": run.name(NAME, "baseline"),
        "pool": run.name(NAME, "baseline"), "database": run.database("baseline"),
        "transport_url": harness.TRANSPORT_URL, "rabbitmq_url": harness.RABBITMQ_URL,
        "events": p.baseline_apply_events, "time_limit": 60.0}, timeout=300)
    run.track(queues=[run.name(NAME, "baseline")], exchanges=[run.name(NAME, "baseline")])
    rows = [
        Row(NAME, "events/s, full queue -> PostgreSQL, committed+acked", "events/s", ours,
            target=10_000, baseline=base["rate"],
            baseline_label="oslo listener, 1 event/transaction"),
        Row(NAME, "nothing lost (journaled & acked = published)", "", 1.0 if ok else 0.0,
            met=ok, note=f"{journaled}/{sequenced} journaled, {left} left"),
    ]
    details = {"events": events, "messages_in_queue": queued, "seconds": t1 - t0,
               "fill_seconds": fill["t_confirmed"] - fill["t_start"],
               "instance_states": states, "left_in_queue": left, "baseline": base,
               "start": start["confirmed"]}
    return ScenarioResult(NAME, rows, details)
