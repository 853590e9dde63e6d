"""apply: events/s from a full queue into PostgreSQL, committed and acknowledged;
10,000 instances over 20 hosts. The baseline is a stock oslo.messaging notification
listener committing one event per transaction.

The queue is filled through the real path: 20 agents (``benchmarks.hosts``), each on
its own test hypervisor with 500 running domains, publish their start inventories
(applied first) and then every domain's suspend, resume, destroy and create: 40,000
events. Only then do the consumers start, as separate processes; the clock runs from
the moment the first consumes to the moment every event is in the journal. This is
done twice: with one consumer, then with ``apply_consumers`` competing consumers on
the same queue (the store applies a batch with the effect of once whichever consumer
has it). A copy of everything goes to a second queue, from which the baseline takes
its messages.

The limit, in the same run: a copy of the first phase's 40,000 messages, consumed and
acknowledged with no database (benchmarks.raw_consume, the consumer's prefetch and
batch acks), as fast as the broker delivers them here.
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
    try:
        start = hosts.call("start", timeout=180)
        # The start inventories (and first heartbeats) go in first, so that both
        # measures drain the same kind of queue: state changes of known instances.
        pipeline, _ = harness.start_consumers(run, f"{NAME}-start", topology, url, 1)
        harness.wait_for(lambda: harness.caught_up(engine, start["last_seq"]), 60,
                         "the start inventories in the database")
        harness.wait_for(lambda: harness.queue_counts(topology.queue)[0] == 0, 30,
                         "the queue to be empty")
        pipeline.stop()
        limit_queue = run.extra_queue(topology.exchange, run.name(NAME, "limit"))
        one = _phase(run, sampler, hosts, engine, topology, url, consumers=1)
        limit = _raw_consume(run, limit_queue, one["events"])
        many = _phase(run, sampler, hosts, engine, topology, url, consumers=p.apply_consumers)
    finally:
        hosts.close()

    base = harness.run_baseline(run, "baseline_apply", {
        "copy_queue": copy, "exchange": run.name(NAME, "baseline"),
        "pool": run.name(NAME, "baseline"), "database": run.database("baseline"),
        "transport_url": harness.TRANSPORT_URL, "rabbitmq_url": harness.RABBITMQ_URL,
        "events": p.baseline_apply_events, "time_limit": 60.0}, timeout=300)
    run.track(queues=[run.name(NAME, "baseline")], exchanges=[run.name(NAME, "baseline")])
    rows = []
    for phase in (one, many):
        consumers = phase["consumers"]
        label = "one consumer" if consumers == 1 else f"{consumers} competing consumers"
        rows.append(Row(NAME, f"events/s, full queue -> PostgreSQL ({label})", "events/s",
                        phase["rate"], target_of_limit=0.6 if consumers == 1 else None,
                        limit=limit["rate"], limit_label="consume & ack, no database",
                        baseline=base["rate"],
                        baseline_label="oslo listener, 1 event/transaction"))
    for part, label in (("consumers", "the consumer"), ("postgres", "PostgreSQL"),
                        ("broker", "RabbitMQ")):
        if part in one["cpu_us_per_event"]:
            rows.append(Row(NAME, f"CPU per event: {label} (one consumer)", "us",
                            one["cpu_us_per_event"][part], higher_is_better=False,
                            limit=limit["cpu_us_per_event"].get(part),
                            limit_label="consume & ack, no database"))
    ok = one["ok"] and many["ok"]
    rows.append(Row(NAME, "nothing lost (journaled & acked = published)", "", 1.0 if ok else 0.0,
                    met=ok, note=" + ".join(f"{ph['journaled']}/{ph['events']}" for ph in (one, many))
                    + f" journaled, {one['left'] + many['left']} left"))
    details = {"phases": [one, many], "limit": limit, "baseline": base,
               "start": start["confirmed"]}
    return ScenarioResult(NAME, rows, details)


def _cpu_sources(consumer_pids: list[int]) -> dict:
    sources = {"consumers": harness.CpuMeter.of_pids(consumer_pids),
               "postgres": harness.postgres_cpu_seconds}
    broker_pid = harness.machine_broker_pid()
    if broker_pid is not None:
        sources["broker"] = harness.CpuMeter.of_pids([broker_pid])
    return sources


def _raw_consume(run: Run, queue: str, events: int) -> dict:
    """Drain ``queue`` (the first phase's copy) with no database; then delete it, so
    that the second phase's fill does not reach it."""
    queued, _ = harness.queue_counts(queue)
    if queued != events:
        raise BenchError(f"apply: {queued} messages in the limit's queue, expected {events}")
    p = run.profile
    raw = harness.ModuleProcess(run, "raw_consume", {
        "rabbitmq_url": harness.RABBITMQ_URL, "queue": queue, "expected": events,
        "prefetch": 2 * p.consumer_batch_size, "ack_every": p.consumer_batch_size,
        "timeout": 300}, f"{NAME}-limit")
    meter = harness.CpuMeter(_cpu_sources([raw.pid])).start()
    got = raw.line(320)
    cpu = {part: round(used / events * 1e6, 1) for part, used in meter.stop().items()}
    with harness.broker() as channel:
        channel.queue_delete(queue)
    if got["events"] != events:
        raise BenchError(f"apply: the raw consumer got {got['events']} of {events}")
    seconds = got["t_last"] - got["t_first"]
    return {"events": events, "seconds": seconds, "rate": events / seconds,
            "cpu_us_per_event": cpu}


def _phase(run: Run, sampler: harness.RssSampler, hosts: HostsProcess, engine, topology,
           url: str, consumers: int) -> dict:
    """Fill the queue (every domain takes apply_steps steps), then drain it with
    ``consumers`` consumers started together; the clock runs from the first one's
    first consume to the last event in the journal."""
    p = run.profile
    journaled_before = harness.journal_count(engine, f"{NAME}-")
    fill = hosts.call("burst", timeout=600, steps=p.apply_steps, parallel=False,
                      wait_confirmed=True, confirm_timeout=300.0)
    if fill["t_confirmed"] is None:
        raise BenchError("apply: the agents did not get every event confirmed within 300 s")
    events = fill["events"]
    queued, _ = harness.queue_counts(topology.queue)
    if queued != events:
        raise BenchError(f"apply: {queued} messages in the queue, expected {events}")

    pipeline, procs = harness.start_consumers(run, f"{NAME}-{consumers}", topology, url,
                                              consumers, wait_consuming=False)
    for i, proc in enumerate(procs):
        sampler.watch(f"consumer-apply-{consumers}.{i}", proc.pid)
    harness.wait_for(lambda: harness.queue_counts(topology.queue)[1] > 0, 30,
                     "the consumer to consume", interval=0.002)
    meter = harness.CpuMeter(_cpu_sources([proc.pid for proc in procs])).start()
    t0 = time.time()
    harness.wait_for(lambda: harness.caught_up(engine, fill["expected_seq"]), 300,
                     "every event committed", interval=0.01)
    t1 = time.time()
    cpu = {part: round(used / events * 1e6, 1) for part, used in meter.stop().items()}
    harness.wait_for(lambda: harness.queue_counts(topology.queue)[0] == 0, 30,
                     "the queue to be empty")
    pipeline.stop()
    left, _ = harness.queue_counts(topology.queue)  # unacked messages would be back
    journaled = harness.journal_count(engine, f"{NAME}-") - journaled_before
    states = harness.instance_states(engine, f"{NAME}-")
    instances = p.hosts * p.domains_per_host
    ok = left == 0 and journaled == events and states == {fill["expected_state"]: instances}
    return {"consumers": consumers, "events": events, "seconds": t1 - t0,
            "rate": events / (t1 - t0), "fill_seconds": fill["t_confirmed"] - fill["t_start"],
            "journaled": journaled, "instance_states": states, "left": left, "ok": ok,
            "cpu_us_per_event": cpu}
