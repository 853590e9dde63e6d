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

What is counted is events: each (host, epoch, seq) the fill stamped, applied once. The
queue may hold more messages than that, and rightly: an agent whose broker connection
is lost or given up during the fill (no confirm for ``confirm_timeout``, heartbeats
missed: a slower machine) sends again, on its next connection, whatever was in flight,
and begins that connection with a heartbeat; the consumer drops the copies as
duplicates. So the phase checks that every event is in the journal once and that every
message in the queue is accounted for (an event, a copy the consumers dropped, a
heartbeat or an inventory: ``QueueAccount``), and the rates are events per second.

The limit, in the same run: a copy of the first phase's messages, consumed and
acknowledged with no database (benchmarks.raw_consume, the consumer's prefetch and
batch acks), as fast as the broker delivers them here.
"""

from __future__ import annotations

import dataclasses
import time

from benchmarks import harness
from benchmarks.harness import BenchError, HostsProcess, Row, Run, ScenarioResult
from lifecycle_common.wire.vocabulary import HOST_PREFIX, INSTANCE_PREFIX

NAME = "apply"
DUPLICATES = "lifecycle_consumer_duplicate_events_total"  # the consumers' /metrics
HEARTBEATS = "lifecycle_consumer_heartbeats_total"
# Targets: one consumer at 0.6 of the raw consume's rate; the consumer and PostgreSQL
# together at most this much CPU per event, us.
RATE_TARGET_OF_LIMIT = 0.6
CPU_TARGET_US = 50.0


@dataclasses.dataclass(frozen=True)
class QueueAccount:
    """Every message of a phase's full queue, as the journal and the consumers account
    for it once the queue is drained. Pure: the counts in, the verdict out.

    The scenario counts ``events``, the (host, epoch, seq) the fill stamped; the queue
    may hold more, each of them a copy the consumers dropped as a duplicate (sent again
    after an agent's connection was lost), a heartbeat (each new connection begins with
    one) or an inventory (after a libvirt reconnection). Right: every event journaled
    once, and every message one of those."""

    events: int        # the fill's events: each domain step stamps one (host, epoch, seq)
    queued: int        # messages in the queue when the consumers started
    journaled: int     # instance events the journal gained: one row per (host, epoch, seq)
    inventories: int   # inventories the journal gained
    duplicates: int    # messages the consumers found journaled already: copies
    heartbeats: int    # heartbeats the consumers applied
    reconnects: int = 0  # broker connections the agents opened during the fill (a cause)

    @property
    def lost(self) -> int:
        """Events of the fill missing from the journal."""
        return max(0, self.events - self.journaled)

    @property
    def unexplained(self) -> int:
        """Messages that are neither an event journaled, a copy dropped, a heartbeat nor
        an inventory (dead-lettered, say); negative if more were counted than queued."""
        return (self.queued - self.journaled - self.inventories - self.duplicates
                - self.heartbeats)

    @property
    def ok(self) -> bool:
        return self.journaled == self.events and self.unexplained == 0

    def describe(self) -> str:
        """e.g. ``40000/40000 events journaled; 40785 messages: copies dropped 784,
        heartbeats 1 (agent reconnections: 1)``."""
        text = f"{self.journaled}/{self.events} events journaled"
        beyond = ", ".join(f"{what} {n}" for what, n in (
            ("copies dropped", self.duplicates), ("heartbeats", self.heartbeats),
            ("inventories", self.inventories), ("unexplained", self.unexplained)) if n)
        if beyond:
            text += f"; {self.queued} messages: {beyond}"
        if self.reconnects:
            text += f" (agent reconnections: {self.reconnects})"
        return text


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
        limit = harness.raw_consume(run, NAME, limit_queue, one["events"],
                                    prefetch=2 * p.consumer_batch_size,
                                    ack_every=p.consumer_batch_size,
                                    cpu_sources=_cpu_sources, timeout=300)
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
        label = _label(consumers)
        rows.append(Row(NAME, f"events/s, full queue -> PostgreSQL ({label})", "events/s",
                        phase["rate"],
                        target_of_limit=RATE_TARGET_OF_LIMIT if consumers == 1 else None,
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
    rows.append(Row(NAME, "CPU per event: the consumer + PostgreSQL (one consumer)", "us",
                    _consumer_and_database(one["cpu_us_per_event"]), target=CPU_TARGET_US,
                    higher_is_better=False,
                    limit=_consumer_and_database(limit["cpu_us_per_event"]),
                    limit_label="consume & ack, no database"))
    ok = one["ok"] and many["ok"]
    # Each event journaled once, every message of the queue accounted for, none left.
    rows.append(Row(NAME, "nothing lost (journaled & acked = published)", "",
                    1.0 if ok else 0.0, met=ok,
                    note=" | ".join(f"{_label(ph['consumers'])}: {ph['account_text']}"
                                    for ph in (one, many))
                    + f" | {one['left'] + many['left']} left"))
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


def _label(consumers: int) -> str:
    return "one consumer" if consumers == 1 else f"{consumers} competing consumers"


def _consumer_and_database(cpu_us: dict) -> float:
    return cpu_us["consumers"] + cpu_us["postgres"]


def _phase(run: Run, sampler: harness.RssSampler, hosts: HostsProcess, engine, topology,
           url: str, consumers: int) -> dict:
    """Fill the queue (every domain takes apply_steps steps), then drain it with
    ``consumers`` consumers started together; the clock runs from the first one's
    first consume to the last event in the journal."""
    p = run.profile
    prefix = f"{NAME}-"
    before = {kind: harness.journal_count(engine, prefix, kind) for kind in (INSTANCE_PREFIX, HOST_PREFIX)}
    sessions_before = hosts.call("stats")["sessions"]
    fill = hosts.call("burst", timeout=600, steps=p.apply_steps, parallel=False,
                      wait_confirmed=True, confirm_timeout=300.0)
    if fill["t_confirmed"] is None:
        raise BenchError("apply: the agents did not get every event confirmed within 300 s")
    events = fill["events"]
    queued, _ = harness.queue_counts(topology.queue)
    if queued < events:  # more is no loss: copies, heartbeats (see QueueAccount)
        raise BenchError(f"apply: {queued} messages in the queue, fewer than the {events} "
                         "events the broker confirmed")

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

    def account() -> QueueAccount:
        scraped = [pipeline.scrape(name) for name in harness.consumer_names(consumers)]
        return QueueAccount(
            events=events, queued=queued,
            journaled=harness.journal_count(engine, prefix, INSTANCE_PREFIX) - before[INSTANCE_PREFIX],
            inventories=harness.journal_count(engine, prefix, HOST_PREFIX) - before[HOST_PREFIX],
            duplicates=int(sum(m.get(DUPLICATES, 0) for m in scraped)),
            heartbeats=int(sum(m.get(HEARTBEATS, 0) for m in scraped)),
            reconnects=fill["sessions"] - sessions_before)

    # The last batches (copies after the last event, say) may still be on their way.
    try:
        counted = harness.wait_for(lambda: (a := account()).unexplained <= 0 and a, 15,
                                   "every message accounted for", interval=0.1)
    except BenchError:
        counted = account()
    pipeline.stop()
    left, _ = harness.queue_counts(topology.queue)  # unacked messages would be back
    states = harness.instance_states(engine, prefix)
    instances = p.hosts * p.domains_per_host
    ok = left == 0 and counted.ok and states == {fill["expected_state"]: instances}
    return {"consumers": consumers, "events": events, "seconds": t1 - t0,
            "rate": events / (t1 - t0), "fill_seconds": fill["t_confirmed"] - fill["t_start"],
            "journaled": counted.journaled, "account": dataclasses.asdict(counted),
            "account_text": counted.describe(), "instance_states": states, "left": left,
            "ok": ok, "cpu_us_per_event": cpu}
