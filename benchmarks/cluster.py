"""cluster: faults on a three-node RabbitMQ cluster of the run's own, under steady load
from real agents and two competing consumers; the loss checker after each.

The cluster (lab/rabbit_cluster.py) runs each node in a network namespace of
its own behind a router namespace, so that traffic between nodes, and between a
client and a node, is cut for real: packets dropped silently, as in a partition. Its
nodes run ``cluster_partition_handling = pause_minority``; the consumers' queue is a
quorum queue. The agents (``benchmarks.hosts``, on their own test hypervisors) and the
consumers (``lifecycle-consumer`` processes) run in the root namespace and list all
three nodes in their transport_url; the consumers reach PostgreSQL through a TCP
forwarder, so that the database can be made unreachable.

The faults, each under a steady stream of changes (RabbitMQ's Jepsen suite names the
partitions):
- random-partition-halves: a random node cut from the other two;
- partition-halves: node 1 cut from nodes 2 and 3;
- partition-majorities-ring: each node drops what one other node sends (3 -> 1,
  1 -> 2, 2 -> 3): each sees a majority, none the same one, and with TCP needing both
  ways, no two nodes can talk;
- partition-random-node: a random node cut from the others (with three nodes the same
  cut as the halves, on another node);
- kill-9-of-a-clients-node: SIGKILL of the node most clients are connected to, started
  again after the fault's duration;
- rolling-restart: each node stopped and started in turn;
- postgresql-restart: the database server restarted under the consumers;
- database-unreachable: the consumers' path to PostgreSQL cut for the duration.

After each fault is healed the runner waits until the checker is clean: every event the
agents stamped during the fault journaled, none twice, none older over a newer, and the
database as libvirt has every domain; the time from the heal to then is the time to
converge. Nothing may be dead-lettered.
"""

from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import threading
import time
from typing import Callable

import sqlalchemy as sa

from benchmarks import checker, harness, journal_state
from benchmarks.harness import BenchError, HostsProcess, Row, Run, ScenarioResult
from lab.forwarder import TcpForwarder
from lab.pipeline import Pipeline
from lab.rabbit_cluster import RabbitCluster
from lab.rabbit_node import beam_pids

SHAPE = harness.IN_PROCESS  # the agents share one process with their hypervisors
NAME = "cluster"
QUEUE = "lifecycle-consumer"
EXCHANGE = "openstack"

FULL = {"random-partition-halves": 20, "partition-halves": 20,
        "partition-majorities-ring": 20, "partition-random-node": 20,
        "kill-9-of-a-clients-node": 10, "rolling-restart": 0, "postgresql-restart": 0,
        "database-unreachable": 30}
SHORT = {"partition-random-node": 12, "kill-9-of-a-clients-node": 5,
         "database-unreachable": 8}  # the CI=true test's


@dataclasses.dataclass
class FaultResult:
    fault: str
    seconds: float               # how long the fault lasted
    events: int                  # stamped by the agents from its start to its heal
    verdict: checker.Verdict     # of everything stamped from the fault's start on
    converge_seconds: float      # from the heal until the checker was clean
    dead_letters: int
    applied_during: int = 0      # of ``events``, journaled before the heal
    note: str = ""
    started_at: float = 0.0      # wall-clock times, to read the logs by
    healed_at: float = 0.0


class FaultRun:
    """The cluster, the consumers, the agents and the load; ``fault(name, seconds)``."""

    def __init__(self, run: Run, hosts: int = 6, domains: int = 40, rate: float = 100.0,
                 converge_timeout: float = 240.0):
        self.run = run
        self.rate = rate
        self.converge_timeout = converge_timeout
        self.prefix = f"{NAME}-{run.id[-6:]}"
        self.cluster = RabbitCluster(3, net_ticktime=6)
        self.forwarder = TcpForwarder(("127.0.0.1", 5432))
        self.names = [f"{self.prefix}-h{i}" for i in range(hosts)]
        self.domains = domains
        self._load_stop = threading.Event()
        self._load_thread: threading.Thread | None = None
        self._random = random.Random(7)
        self.hosts: HostsProcess | None = None

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> "FaultRun":
        self.run.on_cleanup(self.close)
        self.cluster.start()
        self.forwarder.start()
        url = self.run.database(NAME)
        direct = sa.make_url(url)
        self.engine = sa.create_engine(url, pool_size=2, pool_pre_ping=True)  # PG restarts
        through = direct.set(port=self.forwarder.port).render_as_string(hide_password=False)
        rabbit = {"heartbeat_timeout_threshold": 10}
        consumer_options = {
            "consumer": {"queue_type": "quorum", "retry_interval_max": 2.0,
                         "host_down_after": 120.0},
            "oslo_messaging_rabbit": rabbit}
        self.pipeline = Pipeline(f"{self.run.workdir}/{NAME}-consumers", exchange=EXCHANGE,
                                 queue=QUEUE, database=through, host_down_after=120.0,
                                 consumer_options={**consumer_options, "DEFAULT": {
                                     "transport_url": self.cluster.transport_url()}})
        second = self.pipeline.write_consumer_conf("consumer-2.conf", {
            **consumer_options, "DEFAULT": {
                "control_exchange": EXCHANGE,
                "transport_url": self.cluster.transport_url(order=[2, 3, 1])}})
        self.pipeline.start_consumer("consumer", timeout=60)
        self.pipeline.start_consumer("consumer-2", timeout=60, conf=second)
        self.hosts = HostsProcess(
            self.run, f"{NAME}-hosts", self.names, self.domains, EXCHANGE,
            transport_url=self.cluster.transport_url(),
            rabbit_opts={**rabbit, "kombu_failover_strategy": "shuffle"},
            heartbeat_interval=2.0, confirm_timeout=5.0, broker_retry_interval_max=2.0)
        start = self.hosts.call("start", timeout=180)
        self.first_seq = {h: s + 1 for h, s in start["last_seq"].items()}
        harness.wait_for(lambda: harness.caught_up(self.engine, start["last_seq"]), 120,
                         "the start inventories in the database")
        return self

    def close(self) -> None:
        self.stop_load()
        if self.hosts is not None:
            self.hosts.close()
        if hasattr(self, "pipeline"):
            self.pipeline.stop()
        if hasattr(self, "engine"):
            self.engine.dispose()
        self.forwarder.stop()
        self.cluster.destroy()

    # -- load -------------------------------------------------------------------------------
    def start_load(self, rate: float | None = None) -> None:
        """A steady stream of changes (at ``rate``, by default the faults' rate), in
        half-second steps, until stop_load."""
        self._load_stop.clear()
        rate = rate or self.rate

        def load():
            while not self._load_stop.is_set():
                self.hosts.call("steady", timeout=120, rate=rate, seconds=0.5)
        self._load_thread = threading.Thread(target=load, name="load", daemon=True)
        self._load_thread.start()

    def stop_load(self) -> None:
        self._load_stop.set()
        if self._load_thread is not None:
            self._load_thread.join(120)
            self._load_thread = None

    # -- faults -----------------------------------------------------------------------------
    def fault(self, name: str, seconds: float) -> FaultResult:
        apply, heal = self._faults()[name]
        # Each fault starts on a whole cluster. The last one's heal only reconnected the
        # network or restarted a node: a node that pause_minority paused resumes in its
        # own time, and a fault begun before then (kill -9 of another node, say) would
        # leave a minority and stall the pipeline, which is then not this fault's doing.
        self.cluster.wait_for_cluster(nodes=self.cluster.indices, timeout=120,
                                      restart_hung=True)
        self.start_load()
        time.sleep(1.0)  # the load runs before the fault, as it does in production
        before = self.hosts.call("stats")["last_seq"]
        t0, started_at = time.monotonic(), time.time()
        note = apply(seconds) or ""
        at_heal = self.hosts.call("stats")["last_seq"]
        applied_during = self._journaled_between(before, at_heal)
        heal()
        t_heal, healed_at = time.monotonic(), time.time()
        time.sleep(1.0)  # and goes on for a moment after the heal
        self.stop_load()
        end = self.hosts.call("stats")
        stamped = [checker.Stamped(h, end["epoch"][h], before[h] + 1, end["last_seq"][h])
                   for h in self.names]
        verdict = self._converge(stamped)
        converge = time.monotonic() - t_heal
        return FaultResult(fault=name, seconds=t_heal - t0,
                           events=sum(at_heal[h] - before[h] for h in self.names),
                           verdict=verdict, converge_seconds=converge,
                           dead_letters=self.dead_letters(), applied_during=applied_during,
                           note=note, started_at=started_at, healed_at=healed_at)

    def _journaled_between(self, after: dict[str, int], upto: dict[str, int]) -> int:
        """How many of the events stamped after ``after`` and up to ``upto`` (per host)
        the journal already has."""
        with self.engine.connect() as conn:
            return sum(conn.execute(sa.text(
                "SELECT count(*) FROM journal WHERE host = :h AND seq > :a AND seq <= :b"),
                {"h": h, "a": after[h], "b": upto[h]}).scalar() for h in self.names)

    def _converge(self, stamped: list[checker.Stamped]) -> checker.Verdict:
        deadline = time.monotonic() + self.converge_timeout
        while True:
            verdict = self.check(stamped)
            if verdict.clean or time.monotonic() > deadline:
                return verdict
            time.sleep(0.25)

    def check(self, stamped: list[checker.Stamped]) -> checker.Verdict:
        libvirt = self.hosts.call("states")["states"]
        with self.engine.connect() as conn:
            journal, applied, rows = journal_state.read(conn, self.prefix)
        return checker.check(stamped, journal, applied, rows, libvirt)

    def steady_cost(self, seconds: float, rate: float = 400.0) -> dict:
        """The CPU the three nodes (and PostgreSQL) use per event of a steady stream at
        ``rate``, with no fault: what they use idle (the agents only beating) over
        ``seconds`` / 2 first, then under the stream over ``seconds``; the cost of an
        event is the difference over the events (a quorum queue replicates every
        message to every node)."""
        pids = [pid for i in self.cluster.indices for pid in beam_pids(self.cluster.node(i))]
        sources = {"nodes": harness.CpuMeter.of_pids(pids),
                   "postgres": harness.postgres_cpu_seconds}
        idle = harness.CpuMeter(sources).start()
        time.sleep(seconds / 2)  # the idle window
        idle_used = idle.stop()
        before = self.hosts.call("stats")["last_seq"]
        meter = harness.CpuMeter(sources).start()
        self.start_load(rate)
        time.sleep(seconds)  # the measured window
        self.stop_load()
        after = self.hosts.call("stats")["last_seq"]
        harness.wait_for(lambda: harness.caught_up(self.engine, after), 60,
                         "the steady stream committed")
        used = meter.stop()
        events = sum(after[h] - before[h] for h in self.names)
        idle_cores = {k: v / idle.wall for k, v in idle_used.items()}
        marginal = {k: (used[k] - idle_cores[k] * meter.wall) / events * 1e6 for k in used}
        return {"events": events, "seconds": meter.wall, "rate": events / meter.wall,
                "cpu_seconds": used, "idle_cores": idle_cores,
                "nodes_us_per_event": marginal["nodes"],
                "postgres_us_per_event": marginal["postgres"],
                "nodes_us_per_event_with_idle": used["nodes"] / events * 1e6}

    def whole_run(self) -> checker.Verdict:
        """The checker over everything stamped since the agents started."""
        end = self.hosts.call("stats")
        return self.check([checker.Stamped(h, end["epoch"][h], self.first_seq[h],
                                           end["last_seq"][h]) for h in self.names])

    def dead_letters(self) -> int:
        for i in self.cluster.indices:
            try:
                out = self.cluster.ctl(i, "list_queues", "name", "messages", timeout=20)
            except Exception:  # noqa: BLE001 - paused or down: ask the next node
                continue
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == f"{QUEUE}.dlq":
                    return int(parts[1])
        raise BenchError("no cluster node answered for the dead-letter queue")

    def _faults(self) -> dict[str, tuple[Callable[[float], str | None], Callable[[], None]]]:
        lab = self.cluster.lab

        def hold(seconds: float) -> None:
            time.sleep(seconds)

        def partition(groups_of: Callable[[], list[list[str]]]):
            def apply(seconds):
                groups = groups_of()
                lab.partition(groups)
                hold(seconds)
                return " | ".join(",".join(g) for g in groups)
            return apply, lab.heal

        def ring(seconds):
            for a, b in (("n3", "n1"), ("n1", "n2"), ("n2", "n3")):
                lab.cut(a, b)
            hold(seconds)
            return "n3->n1, n1->n2, n2->n3 dropped"

        def random_halves():
            members = ["n1", "n2", "n3"]
            alone = self._random.choice(members)
            return [[alone], [m for m in members if m != alone]]

        killed = {}

        def kill9(seconds):
            i = self._busiest_node()
            killed["i"] = i
            self.cluster.kill9(i)
            hold(seconds)
            return f"node {i} ({self.cluster.node(i)})"

        def restart_killed():
            self.cluster.start_node(killed.pop("i"))

        def rolling(seconds):
            durations = self.cluster.rolling_restart()
            return ", ".join(f"n{i} {s:.0f}s" for i, s in durations.items())

        def postgres(seconds):
            t = time.monotonic()
            version = subprocess.run(["sh", "-c", "ls /etc/postgresql | sort -V | tail -n 1"],
                                     capture_output=True, text=True, check=True).stdout.strip()
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                            "restart"], check=True, capture_output=True, timeout=120)
            return f"restarted in {time.monotonic() - t:.1f}s"

        def unreachable(seconds):
            self.forwarder.stop()
            hold(seconds)
            return None

        return {
            "random-partition-halves": partition(random_halves),
            "partition-halves": partition(lambda: [["n1"], ["n2", "n3"]]),
            "partition-majorities-ring": (ring, lab.heal),
            "partition-random-node": partition(random_halves),  # the same shape with 3
            "kill-9-of-a-clients-node": (kill9, restart_killed),
            "rolling-restart": (rolling, lambda: None),
            "postgresql-restart": (postgres, lambda: None),
            "database-unreachable": (unreachable, self.forwarder.start),
        }

    def _busiest_node(self) -> int:
        """The node with the most client connections (agents and consumers)."""
        counts = {i: 0 for i in self.cluster.indices}
        for i in self.cluster.indices:
            try:
                out = self.cluster.ctl(i, "list_connections", "pid", timeout=20)
            except Exception:  # noqa: BLE001 - that node does not answer: ask another
                continue
            for node in re.findall(r"<rabbit@([^.>]+)\.", out):
                for j in self.cluster.indices:
                    if self.cluster.hostname(j) == node:
                        counts[j] += 1
            break
        return max(counts, key=counts.get)


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    faults = SHORT if run.profile.quick else FULL
    runner = FaultRun(run).start()
    cost = runner.steady_cost(5.0 if run.profile.quick else 20.0)
    results = [runner.fault(name, seconds) for name, seconds in faults.items()]
    whole = runner.whole_run()
    cluster_start = runner.cluster.startup_seconds
    runner.close()
    rows = [Row(NAME, "no fault: CPU of the 3 nodes per event, over idle (quorum queue)",
                "us", cost["nodes_us_per_event"],
                note=f"at {cost['rate']:.0f} events/s; idle the nodes use "
                     f"{cost['idle_cores']['nodes']:.2f} cores; PostgreSQL "
                     f"{cost['postgres_us_per_event']:.0f} us/event")]
    for r in results:
        v = r.verdict
        ok = v.clean and r.dead_letters == 0
        rows.append(Row(NAME, f"{r.fault}: seconds to converge after the heal", "s",
                        r.converge_seconds, met=ok,
                        note=f"{r.events} events in {r.seconds:.0f}s, {r.applied_during} "
                             f"applied before the heal; {v.lost} lost, "
                             f"{v.applied_twice} twice, {v.out_of_order} out of order, "
                             f"{v.difference} differ, {r.dead_letters} dead-lettered"
                             + (f"; {r.note}" if r.note else "")))
    rows.append(Row(NAME, "whole run: every event stamped accounted for", "", 1.0 if whole.clean
                    else 0.0, met=whole.clean,
                    note=f"{whole.stamped} stamped, {whole.lost} lost, {whole.difference} differ"))
    details = {"cluster_start_seconds": cluster_start, "rate": runner.rate,
               "steady_cost": cost,
               "hosts": len(runner.names), "domains_per_host": runner.domains,
               "faults": [dataclasses.asdict(r) for r in results],
               "whole_run": dataclasses.asdict(whole)}
    return ScenarioResult(NAME, rows, details)
