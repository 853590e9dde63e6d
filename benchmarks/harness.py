"""What every scenario shares: names isolated per run, the PostgreSQL database of the
run, the consumer as a separate process, the simulated hosts' process, RSS sampling,
and the result rows the table and the JSON are made of.

Each run gets its own exchanges and queues (``bench-<run id>-<scenario>``), deleted at
the end, and its own PostgreSQL database created with ``lifecycle-manage db sync`` and
dropped at the end, so a run never sees another's messages or rows.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import select
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable, Optional

import amqp
import kombu
import sqlalchemy as sa

from consumer.topology import Topology, declare
from lab import waiting
from lab.pipeline import Pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RABBITMQ_URL = os.environ.get("LIFECYCLE_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
TRANSPORT_URL = os.environ.get("LIFECYCLE_BENCH_TRANSPORT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
POSTGRES_ADMIN_URL = os.environ.get("LIFECYCLE_BENCH_POSTGRES_URL",
                                    "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
ROUTING_KEY = "notifications.info"


class BenchError(Exception):
    """A benchmark could not run or its result cannot be trusted (e.g. events lost)."""


# -- results -------------------------------------------------------------------------

# How a figure was measured: the agent as a process on libvirtd with the load from
# other processes (as on a compute host), everything in one process (the agent's own
# cost), or computed from a model (the periodic poll).
PRODUCTION, IN_PROCESS, MODEL = "production", "in-process", "model"


@dataclasses.dataclass
class Row:
    """One figure: ours beside the physical limit measured in the same run (if any) and
    the stock way (the baseline), their ratios and the target. The JSON keeps these
    fields, so that runs compare over time (``--compare``)."""

    scenario: str
    name: str
    unit: str
    ours: Optional[float]
    target: Optional[float] = None        # absolute; or set from target_of_limit
    higher_is_better: bool = True
    baseline: Optional[float] = None
    baseline_label: str = ""
    limit: Optional[float] = None         # the most any implementation could do here
    limit_label: str = ""
    target_of_limit: Optional[float] = None  # the target as a share of the limit (0.9)
    ratio_to_limit: Optional[float] = None   # ours / limit (a share: 1 is the limit)
    ratio_to_baseline: Optional[float] = None  # how many times better than the baseline
    met: Optional[bool] = None
    note: str = ""
    shape: str = ""  # PRODUCTION, IN_PROCESS or MODEL; empty: the scenario's SHAPE

    def __post_init__(self):
        if self.target_of_limit is not None and self.limit:
            self.target = self.target_of_limit * self.limit
        if self.ratio_to_limit is None and self.limit and self.ours is not None:
            self.ratio_to_limit = (self.ours / self.limit) if self.higher_is_better else (self.limit / self.ours)
        if self.met is None and self.target is not None and self.ours is not None:
            self.met = (self.ours >= self.target) if self.higher_is_better else (self.ours <= self.target)
        if self.ratio_to_baseline is None and self.baseline and self.ours:
            self.ratio_to_baseline = ((self.ours / self.baseline) if self.higher_is_better
                                      else (self.baseline / self.ours))


@dataclasses.dataclass
class ScenarioResult:
    name: str
    rows: list[Row]
    details: dict
    seconds: float = 0.0


# -- the run ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of one run: the full one, or --quick for a smoke run."""

    quick: bool
    soak_seconds: float
    publish_domains: int = 2000
    publish_steps: int = 8               # 2 full cycles: 16,000 events
    publish_loaders: int = 3             # load processes on the agent's libvirtd
    baseline_publish_events: int = 8000
    hosts: int = 20
    domains_per_host: int = 500          # 20 x 500 = 10,000 instances
    apply_steps: int = 4                 # 40,000 events in the queue
    baseline_apply_events: int = 6000
    apply_consumers: int = 2             # the second measure: competing consumers
    consumer_batch_size: int = 500       # [consumer] batch_size (default), for the limit's acks
    latency_rate: float = 1000.0
    latency_seconds: float = 20.0
    latency_hosts: int = 20              # agent processes, each on a libvirtd of its own
    latency_loaders: int = 2             # load processes pacing the latency_rate between them
    soak_rate: float = 1000.0
    fleet_hosts: int = 200               # fleet: 200 x 50 = 10,000 instances
    fleet_domains: int = 50
    fleet_rate: float = 400.0            # the steady stream of changes, events/s (2 a host)
    fleet_seconds: float = 20.0
    fleet_consumers: tuple = (1, 2, 4)
    fleet_processes: int = 10            # the agents' processes, 20 agents each
    storm_hosts: int = 50
    beat_hosts: int = 100                # fleet: agents beating every beat_interval
    beat_interval: float = 0.1           # (1,000 heartbeats/s, as 10,000 hosts every 10 s)
    beat_seconds: float = 15.0
    webhook_hosts: int = 4               # webhook: 4 x 500 = 2,000 instances
    webhook_domains: int = 500
    webhook_steps: int = 10              # 10 events an instance: 20,000 in the queue
    webhook_in_flight: tuple = (16, 64)  # [webhook] max_in_flight, one measure each
    webhook_client_requests: int = 10000  # the receiver's check with a trivial client

    @classmethod
    def make(cls, quick: bool, soak_seconds: float) -> "Profile":
        if not quick:
            return cls(quick=False, soak_seconds=soak_seconds)
        return cls(quick=True, soak_seconds=min(soak_seconds, 20.0), publish_steps=4,
                   baseline_publish_events=2000, apply_steps=2, baseline_apply_events=1500,
                   latency_seconds=5.0, fleet_hosts=40, fleet_domains=25, fleet_rate=300.0,
                   fleet_seconds=6.0, fleet_consumers=(1, 2), fleet_processes=2,
                   storm_hosts=10, beat_hosts=20, beat_seconds=5.0, webhook_steps=2,
                   webhook_client_requests=3000)


class Run:
    """The run's names, work directory, database and clean-up."""

    def __init__(self, profile: Profile, results_dir: str):
        self.profile = profile
        self.id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.results_dir = results_dir
        self.workdir = os.path.join(results_dir, f"run-{self.id}")
        os.makedirs(self.workdir, exist_ok=True)
        self._queues: list[str] = []
        self._exchanges: list[str] = []
        self._databases: list[str] = []
        self._cleanups: list[Callable[[], None]] = []

    def name(self, scenario: str, suffix: str = "") -> str:
        return f"bench-{self.id}-{scenario}{'-' + suffix if suffix else ''}"

    # -- broker ----------------------------------------------------------------------
    def topology(self, scenario: str) -> Topology:
        """A scenario's own exchange and consumer queue, declared as the consumer would."""
        name = self.name(scenario)
        topology = Topology(exchange=name, queue=name, routing_key=ROUTING_KEY)
        with broker() as channel:
            declare(channel, topology)
        self._exchanges += [topology.exchange, topology.dead_letter_exchange]
        self._queues += [topology.queue, topology.dead_letter_queue]
        return topology

    def extra_queue(self, exchange: str, name: str) -> str:
        with broker() as channel:
            channel.queue_declare(name, durable=True, auto_delete=False)
            channel.queue_bind(name, exchange, ROUTING_KEY)
        self._queues.append(name)
        return name

    def track(self, queues=(), exchanges=()) -> None:
        self._queues += list(queues)
        self._exchanges += list(exchanges)

    # -- database ----------------------------------------------------------------------
    def database(self, label: str) -> str:
        """A new PostgreSQL database, its schema made by ``lifecycle-manage db sync``."""
        name = f"lifecycle_bench_{self.id.replace('-', '_')}_{label}"
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        self._databases.append(name)
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        pipeline = Pipeline(os.path.join(self.workdir, f"db-{label}"), exchange="unused",
                            queue="unused", database=url)
        pipeline.db_sync()
        return url

    def main_database(self) -> tuple[str, sa.Engine]:
        """The run's database for the consumer's scenarios (each uses its own hosts), and
        an engine to read it."""
        if not hasattr(self, "_main"):
            url = self.database("main")
            engine = sa.create_engine(url, pool_size=2)
            self.on_cleanup(engine.dispose)
            self._main = (url, engine)
        return self._main

    def on_cleanup(self, action: Callable[[], None]) -> None:
        self._cleanups.append(action)

    def cleanup(self) -> None:
        for action in reversed(self._cleanups):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                print(f"bench: clean-up step failed: {exc}", file=sys.stderr)
        with broker() as channel:
            for q in self._queues:
                _quietly(channel, "queue_delete", q)
            for x in self._exchanges:
                _quietly(channel, "exchange_delete", x)
        if self._databases:
            admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for name in self._databases:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()


class broker:
    """A short-lived channel to RabbitMQ: ``with broker() as channel``."""

    def __enter__(self):
        self._conn = kombu.Connection(RABBITMQ_URL, connect_timeout=5)
        self._conn.connect()
        return self._conn.channel()

    def __exit__(self, *exc):
        self._conn.release()


def _quietly(channel, method: str, name: str) -> None:
    try:
        getattr(channel, method)(name)
    except amqp.exceptions.AMQPError:
        pass


def queue_counts(queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``."""
    with broker() as channel:
        _, messages, consumers = channel.queue_declare(queue, passive=True)
        return messages, consumers


# -- processes -------------------------------------------------------------------------

class HostsProcess:
    """``benchmarks.hosts`` in a process of its own: simulated hosts driven by commands."""

    def __init__(self, run: Run, label: str, names: list[str], domains: int, exchange: str,
                 transport_url: str = TRANSPORT_URL, rabbit_opts: dict | None = None,
                 **agent_opts):
        spec = {"hosts": names, "workdir": os.path.join(run.workdir, label), "domains": domains,
                "exchange": exchange, "transport_url": transport_url,
                "rabbit_opts": rabbit_opts or {},
                "agent_opts": {"heartbeat_interval": 1.0, "inventory_interval": 0,
                               "shutdown_timeout": 10.0, **agent_opts}}
        os.makedirs(spec["workdir"], exist_ok=True)
        self._lock = threading.Lock()  # one request at a time (a load thread, a reader)
        self.log_path = os.path.join(run.workdir, f"{label}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.hosts", "--spec", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO,
                start_new_session=True)
        run.on_cleanup(self.close)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, cmd: str, timeout: float = 120.0, **args) -> dict:
        with self._lock:
            return self._call(cmd, timeout, **args)

    def _call(self, cmd: str, timeout: float, **args) -> dict:
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise BenchError(f"simulated hosts: no reply to {cmd} within {timeout}s "
                             f"(see {self.log_path})")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"simulated hosts exited during {cmd} (see {self.log_path})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise BenchError(f"simulated hosts: {cmd} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("stop", timeout=90)
            except (BenchError, OSError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_consumer(run: Run, scenario: str, topology: Topology, database: str,
                   wait_consuming: bool = True) -> tuple[Pipeline, subprocess.Popen]:
    """``lifecycle-consumer`` as a separate process, through lab.pipeline.Pipeline."""
    pipeline, procs = start_consumers(run, scenario, topology, database, 1, wait_consuming)
    return pipeline, procs[0]


def start_consumers(run: Run, scenario: str, topology: Topology, database: str, count: int,
                    wait_consuming: bool = True, consumer_options: dict | None = None
                    ) -> tuple[Pipeline, list[subprocess.Popen]]:
    """``count`` competing ``lifecycle-consumer`` processes on one queue, named
    ``consumer`` and ``consumer-<n>`` in the pipeline (``consumer_options``: sections of
    options for their configuration files). Each has a configuration file of its own,
    so that each serves /metrics on a port of its own: on one port, every consumer but
    the first would stop at start (the port in use), and "competing consumers" would be
    one."""
    pipeline = Pipeline(os.path.join(run.workdir, f"consumer-{scenario}"),
                        exchange=topology.exchange, queue=topology.queue, database=database,
                        host_down_after=30.0, consumer_options=consumer_options)
    procs = [pipeline.start_consumer(name, conf=None if i == 0 else
                                     pipeline.write_consumer_conf(f"{name}.conf",
                                                                  consumer_options or {}))
             for i, name in enumerate(consumer_names(count))]
    run.on_cleanup(pipeline.stop)
    if wait_consuming:
        wait_for(lambda: queue_counts(topology.queue)[1] >= count, 30,
                 "the consumers to consume", interval=0.005)
    return pipeline, procs


def consumer_names(count: int) -> list[str]:
    """The names ``start_consumers`` gives ``count`` consumers in their pipeline."""
    return ["consumer"] + [f"consumer-{i}" for i in range(1, count)]


@dataclasses.dataclass
class Fleet:
    """A consumer on the run's main database and a process of simulated hosts whose
    start inventories are already committed."""

    engine: object
    pipeline: object
    hosts: "HostsProcess"
    names: list

    def close(self) -> None:
        self.hosts.close()
        self.pipeline.stop_process("consumer")


def start_fleet(run: Run, sampler: "RssSampler", scenario: str, prefix: str) -> Fleet:
    p = run.profile
    url, engine = run.main_database()
    topology = run.topology(scenario)
    pipeline, proc = start_consumer(run, scenario, topology, url)
    sampler.watch(f"consumer-{scenario}", proc.pid)
    names = [f"{prefix}-h{i:02d}" for i in range(p.hosts)]
    hosts = HostsProcess(run, f"{scenario}-hosts", names, p.domains_per_host, topology.exchange)
    start = hosts.call("start", timeout=180)
    wait_for(lambda: caught_up(engine, start["last_seq"]), 60,
             "the start inventories in the database")
    return Fleet(engine, pipeline, hosts, names)


# The lab's one wait_for, failing the scenario (BenchError); a benchmark polls every
# 20 ms unless it says otherwise, since a poll opens a broker connection or queries the
# database being measured: wait_for(predicate, timeout, what, interval=0.02).
wait_for = functools.partial(waiting.wait_for, interval=0.02, error=BenchError)


# -- memory ------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in MB, from /proc/<pid>/status."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) / 1024.0
    except FileNotFoundError:
        pass
    return values


class RssSampler:
    """Samples VmRSS and VmHWM of labelled processes in a thread."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, label: str, pid: int) -> None:
        self.pids[label] = pid
        self.series.setdefault(label, [])

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def sample(self) -> None:
        now = time.monotonic()
        for label, pid in list(self.pids.items()):
            status = proc_status(pid)
            if "VmRSS" in status:
                self.series[label].append((now, status["VmRSS"]))
                self.peak[label] = max(self.peak.get(label, 0.0), status.get("VmHWM", 0.0),
                                       status["VmRSS"])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()


# -- database reads ------------------------------------------------------------------------

def journal_rows(engine: sa.Engine, host_prefix: str) -> list:
    """(event_type, occurred_at, applied_at) of every journal row of the hosts."""
    with engine.connect() as conn:
        return list(conn.exec_driver_sql(
            "SELECT event_type, occurred_at, applied_at FROM journal WHERE host LIKE %s",
            (host_prefix + "%",)))


def caught_up(engine: sa.Engine, last_seq: dict[str, int]) -> bool:
    """Whether each host's journal reached the given sequence number. A host's events
    reach the queue in order and each batch commits in order, so this says every event
    up to there is committed. One index probe per host (the newest key of the journal's
    primary key, host, epoch, seq; an agent's sequence goes on across its epochs), so
    polling it does not load the database being measured: ``max(seq)`` per host read
    every journal row of the host, about 13 ms a poll at 4,000 rows a host, which
    counted 20 us per event against PostgreSQL in the apply scenario. Counting the
    journal would too; ``hosts.last_seq`` would not do: a heartbeat can carry a number
    whose event is still on its way."""
    with engine.connect() as conn:
        rows = dict(conn.exec_driver_sql(
            "SELECT h, (SELECT seq FROM journal WHERE host = h ORDER BY epoch DESC, seq DESC "
            "LIMIT 1) FROM unnest(%s) AS h",
            (list(last_seq),)).all())
    return all((rows.get(name) or -1) >= seq for name, seq in last_seq.items())


def journal_count(engine: sa.Engine, host_prefix: str, event_type_prefix: str = "") -> int:
    """Journal rows of the hosts (of the event types beginning with
    ``event_type_prefix``): one per (host, epoch, seq) applied."""
    with engine.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT count(*) FROM journal WHERE host LIKE %s AND event_type LIKE %s",
            (host_prefix + "%", event_type_prefix + "%")).scalar()


def instance_states(engine: sa.Engine, host_prefix: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.exec_driver_sql(
            "SELECT power_state, count(*) FROM instances WHERE host LIKE %s AND NOT deleted "
            "GROUP BY power_state", (host_prefix + "%",)).all())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))
    return ordered[index]


def seconds(delta: datetime.timedelta) -> float:
    return delta.total_seconds()


class ModuleProcess:
    """``python -m benchmarks.<module> JSON`` in a process of its own that prints JSON
    lines on stdout (``{"ready": true}`` once it is set, its result last); its stderr
    goes to the run's log of that label."""

    def __init__(self, run: Run, module: str, args: dict, label: str):
        self.label = label
        self.log_path = os.path.join(run.workdir, f"{label}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"benchmarks.{module}", json.dumps(args)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=True)
        run.on_cleanup(self.kill)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float) -> dict:
        """The next JSON line it prints."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        text = self.proc.stdout.readline() if ready else b""
        if not text:
            state = "exited" if self.proc.poll() is not None else f"silent for {timeout:.0f}s"
            raise BenchError(f"{self.label} {state} (see {self.log_path})")
        return json.loads(text)

    def wait(self, timeout: float = 30.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def raw_consume(run: "Run", scenario: str, queue: str, events: int, prefetch: int,
                ack_every: int, cpu_sources, timeout: float) -> dict:
    """The raw consume limit: drain ``queue`` (a copy of what the scenario's service
    consumes) with no decoding, no database, no HTTP (benchmarks/raw_consume.py), with
    the service's prefetch and acks; then delete it. ``cpu_sources(pids)``: what the
    CpuMeter reads, given the raw consumer's pid. Its rate is ``events`` (the
    scenario's) per second."""
    queued, _ = queue_counts(queue)
    if queued < events:
        raise BenchError(f"{scenario}: {queued} messages in the limit's queue, fewer than "
                         f"the {events} events confirmed")
    raw = ModuleProcess(run, "raw_consume", {
        "rabbitmq_url": RABBITMQ_URL, "queue": queue, "expected": queued,
        "prefetch": prefetch, "ack_every": ack_every, "timeout": timeout},
        f"{scenario}-limit")
    meter = CpuMeter(cpu_sources([raw.pid])).start()
    got = raw.line(timeout + 20)
    cpu = {part: round(used / events * 1e6, 1) for part, used in meter.stop().items()}
    with broker() as channel:
        channel.queue_delete(queue)
    if got["events"] != queued:
        raise BenchError(f"{scenario}: the raw consumer got {got['events']} of {queued} "
                         "messages")
    seconds = got["t_last"] - got["t_first"]
    return {"events": events, "messages": queued, "seconds": seconds,
            "rate": events / seconds, "cpu_us_per_event": cpu}


def run_baseline(run: Run, module: str, args: dict, timeout: float) -> dict:
    """Run ``benchmarks.<module>`` as a subprocess (oslo.messaging and its eventlet stay
    out of this process); it prints one JSON object on its last line of output."""
    log_path = os.path.join(run.workdir, f"{module}.log")
    with open(log_path, "ab") as log:
        try:
            done = subprocess.run(
                [sys.executable, "-m", f"benchmarks.{module}", json.dumps(args)],
                stdout=subprocess.PIPE, stderr=log, cwd=REPO, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{module} did not finish within {timeout}s (see {log_path})") from exc
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise BenchError(f"{module} failed with status {done.returncode} (see {log_path})")
    return json.loads(lines[-1])


# -- CPU ------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """User and system CPU seconds of ``pid`` (with ``reaped_children``, of its children
    that have exited too), from /proc/<pid>/stat; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


# The agent's threads whose CPU the production scenarios show apart: libvirt's event
# loop (and the callback on it), the worker (outbox, encoding, AMQP), the checkpointer.
AGENT_THREADS = ("libvirt-events", "publisher", "outbox-ckpt")


def thread_cpu_seconds(pids: list[int], name: str) -> float:
    """CPU seconds of the threads called ``name`` (their comm, as ``top -H`` shows it)
    in the processes ``pids``; a thread that has ended is not counted. Read from
    /proc/<pid>/task/<tid>/schedstat (the scheduler's nanoseconds on a CPU), not from
    the utime and stime ticks of .../stat: a tick charges the thread it interrupts, and
    a thread woken by a timer (the checkpointer, every second) runs just after a tick
    and is done before the next, so that its ticks count nearly nothing (0 us per event
    for 20 agents' checkpointers over 20 s, where schedstat says about 10)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if f.read().rstrip("\n") != name:
                        continue
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / 1e9


def _processes(comm: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == comm:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def machine_broker_pid() -> int | None:
    """The Erlang VM of the machine's own RabbitMQ (rabbit@localhost, run as the
    rabbitmq user from /var/lib/rabbitmq), not a test node's."""
    for pid in _processes("beam.smp"):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if b"HOME=/var/lib/rabbitmq\0" in f.read():
                    return pid
        except OSError:
            continue
    return None


def postgres_cpu_seconds() -> float:
    """CPU seconds of the PostgreSQL server: every postgres process alive now, plus what
    the postmaster's children that have exited used."""
    pids = _processes("postgres")
    if not pids:
        return 0.0
    postmaster = min(pids)  # the first one started
    return _cpu_seconds(postmaster, reaped_children=True) + sum(
        _cpu_seconds(pid) for pid in pids if pid != postmaster)


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle, not waiting on I/O)
    since boot, from /proc/stat: over an interval, busy / interval is the cores used."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICK


class CpuMeter:
    """CPU seconds used by labelled processes (or groups) between ``start`` and
    ``stop``; ``sources`` maps a label to a function returning CPU seconds so far."""

    def __init__(self, sources: dict[str, Callable[[], float]]):
        self.sources = sources
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.used: dict[str, float] = {}
        self.wall = 0.0

    @staticmethod
    def of_pids(pids: list[int]) -> Callable[[], float]:
        return lambda: sum(_cpu_seconds(pid) for pid in pids)

    def start(self) -> "CpuMeter":
        self._t0 = time.monotonic()
        self._start = {label: read() for label, read in self.sources.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.wall = time.monotonic() - self._t0
        self.used = {label: read() - self._start[label] for label, read in self.sources.items()}
        return self.used

    def share(self, label: str) -> float:
        """The label's CPU use as a share of one core over the measured time."""
        return self.used[label] / self.wall if self.wall else 0.0
