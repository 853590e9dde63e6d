"""faults: the ordinary faults of a real cloud, one after another, under a steady stream
of changes, with the loss checker after each (in the manner of Jepsen).

The production shape: four ``lifecycle-agent`` processes, each on a libvirtd of its own
(benchmarks.daemons: a session libvirtd as nobody holding the host's domains), the
changes made through the daemons' sockets by a thread of this process (another client
of libvirtd, as nova or virsh would be), and one ``lifecycle-consumer`` process. The
broker is a RabbitMQ node of the run's own (lab/rabbit_node.py), the database
a PostgreSQL primary with a synchronous streaming standby of the run's own
(lab/pg_pair.py), which the consumer reaches through a multi-host URL
(``target_session_attrs=read-write``).

The hosts: h0 and h1 run on clocks of their own (libfaketime, lab/fake_clock.py),
h2 keeps its state (the outbox) on a small tmpfs, h3 is plain.

The faults, each healed before the next:
- clock-skew: h0's clock 200 s ahead and h1's 40 s behind, for the fault's duration;
- clock-step-back: h0's clock stepped back 120 s mid-run, then forward again;
- start-two-hours-ahead: h1 restarted with its clock 7,200 s ahead, then restarted again
  with the right clock (the heal);
- database-stall: ``LOCK TABLE instances IN ACCESS EXCLUSIVE MODE`` held by another
  session; the consumer holds its batches (lock_timeout) until the lock is released;
- postgresql-failover: the standby promoted and the old primary stopped, under load;
- broker-disk-alarm: the node's disk free limit set above the free space (every
  publishing connection blocked), then back to 50 MB;
- nack-storm: a policy on the consumer's queue (``max-length`` 0, ``overflow``
  ``reject-publish``): RabbitMQ nacks every publish routed to it; removed at the heal;
- outbox-disk-full: h2's tmpfs kept full (a file refilled as space frees), then freed.

What the agents stamped comes from each agent process itself (benchmarks.agent_lineage:
its start and stop lines, and its heartbeats for the span still running): every
(host, epoch, seq) stamped must be in the journal, none twice, none older over a newer,
and the database as libvirt has every domain; the time from the heal to then is the
time to converge. Nothing may be dead-lettered. Events the outbox could not write (a
full disk) keep their numbers and are never published: they are not lost but counted
by the agent (``lifecycle_agent_events_unwritten_total``, and its log for inventories),
reported apart, and the inventory after the heal must put the database right.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import subprocess
import threading
import time
from collections import Counter
from typing import Callable

import sqlalchemy as sa

from benchmarks import agent_lineage, checker, harness, journal_state
from benchmarks.daemons import Daemon
from benchmarks.harness import BenchError, Row, Run, ScenarioResult
from benchmarks.hosts import CYCLE, domain_name
from consumer.cli import tables
from lab import tmpfs
from lab.fake_clock import FakeClock
from lab.pg_pair import PgPair
from lab.pipeline import Pipeline
from lab.rabbit_node import RabbitNode

SHAPE = harness.PRODUCTION
NAME = "faults"
QUEUE = "lifecycle-consumer"
EXCHANGE = "openstack"
UNWRITTEN = "lifecycle_agent_events_unwritten_total"
NACKS = "lifecycle_agent_nacks_total"
BLOCKED = "lifecycle_agent_broker_blocked"
NACK_POLICY = "faults-nack-storm"
DISK_BURST = 200        # changes of the full disk's host at once (an evacuation),
DISK_BURST_EVERY = 3.0  # every so many seconds of that fault
WRITABLE = "lifecycle_agent_outbox_writable"
# A heartbeat built this long after the last change carries its number (the callback
# stamps a change within milliseconds of libvirt making it).
QUIET_MARGIN = 0.5

# Seconds each fault lasts (0: as long as it takes).
FULL = {"clock-skew": 20, "clock-step-back": 20, "start-two-hours-ahead": 15,
        "database-stall": 20, "postgresql-failover": 10, "broker-disk-alarm": 20,
        "nack-storm": 15, "outbox-disk-full": 20}
SHORT = {"clock-step-back": 8, "database-stall": 8, "postgresql-failover": 5,
         "nack-storm": 8, "outbox-disk-full": 8}  # the system test's


@dataclasses.dataclass
class FaultResult:
    fault: str
    seconds: float               # how long the fault lasted
    events: int                  # changes libvirt made from its start to its heal
    stamped: int                 # numbers the agents stamped from its start on
    lost: int                    # stamped, not journaled, and not counted as not written
    applied_twice: int
    out_of_order: int
    difference: int              # instances the database and libvirt disagree on
    dead_letters: int            # dead-lettered during the fault and its convergence
    not_written: int             # refused by a full disk, counted by the agent
    gaps: int                    # numbers stamped and not in the journal (= not_written)
    converge_seconds: float      # from the heal until the checker was clean
    converged: bool
    applied_during: int = 0      # journal rows committed between the start and the heal
    evidence: dict = dataclasses.field(default_factory=dict)  # that the fault happened
    note: str = ""
    lost_examples: tuple = ()
    difference_examples: tuple = ()
    started_at: float = 0.0      # wall-clock times, to read the logs by
    healed_at: float = 0.0

    @property
    def clean(self) -> bool:
        return self.converged and not (self.lost or self.applied_twice or self.out_of_order
                                       or self.difference or self.dead_letters)


@dataclasses.dataclass(frozen=True)
class Check:
    """One look at the pipeline: the checker's verdict over what the agents stamped,
    and whether every agent's heartbeats since the changes stopped have arrived (until
    then the last numbers stamped are not known)."""
    verdict: checker.Verdict
    heard: bool
    not_written: int

    @property
    def lost(self) -> int:
        """Numbers missing from the journal that the agents did not count as not written."""
        return max(0, self.verdict.lost - self.not_written)

    @property
    def clean(self) -> bool:
        v = self.verdict
        return (self.heard and v.lost == self.not_written and not v.applied_twice
                and not v.out_of_order and not v.difference)


class SteadyLoad:
    """A steady stream of lifecycle changes through the daemons' sockets, round robin
    over the hosts and their domains, from a thread of this process; each change is one
    libvirt event. Counts the changes per host."""

    def __init__(self, daemons: list[Daemon], domains: int, rate: float):
        import libvirt
        self.rate = rate
        self._daemons = daemons
        self._conns = {d.host: libvirt.open(d.uri) for d in daemons}
        self._domains = [[d.host, self._conns[d.host].lookupByName(domain_name(d.host, i)), 0]
                         for i in range(domains) for d in daemons]
        self._cycle = itertools.cycle(self._domains)
        self.steps: Counter[str] = Counter({d.host: 0 for d in daemons})
        self._stop = threading.Event()
        self._stepping = threading.Lock()  # the thread's steps and a burst's, one at a time
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="faults-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        if self._error is not None:
            gone = [d.host for d in self._daemons if d.proc is None or d.proc.poll() is not None]
            raise BenchError(
                f"the load on libvirtd failed: {self._error}"
                + (f"; the libvirtd of {', '.join(gone)} exited (killed from outside the "
                   "run? `pkill -x libvirtd` ends every libvirtd on the machine)" if gone
                   else "")) from self._error

    def _run(self) -> None:
        t0, n = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                due = t0 + n / self.rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                self._step(next(self._cycle))
                n += 1
        except Exception as exc:  # noqa: BLE001 - said by stop()
            self._error = exc

    def _step(self, entry: list) -> None:
        with self._stepping:
            host, dom, position = entry
            getattr(dom, CYCLE[position][0])()
            entry[2] = (position + 1) % len(CYCLE)
            self.steps[host] += 1

    def burst(self, host: str, count: int) -> None:
        """``count`` changes of ``host``'s domains as fast as its daemon takes them (as
        a host evacuated or restarted does), beside the steady stream."""
        mine = itertools.cycle([e for e in self._domains if e[0] == host])
        for _ in range(count):
            self._step(next(mine))

    def states(self) -> dict[str, dict[str, str]]:
        """Every domain's power state as libvirt has it now: {host: {uuid: state}}."""
        from lifecycle_publisher.translation import power_state_of
        return {host: {dom.UUIDString(): power_state_of(*dom.state()).value
                       for dom in conn.listAllDomains()}
                for host, conn in self._conns.items()}

    def close(self) -> None:
        self._stop.set()
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - its daemon may be gone already
                pass


class FaultRun:
    """The node, the database pair, the daemons, the agents, the consumer and the load;
    ``fault(name, seconds)`` runs one fault and returns its result."""

    def __init__(self, run: Run, domains: int = 50, rate: float = 100.0,
                 converge_timeout: float = 120.0):
        self.run = run
        self.domains = domains
        self.rate = rate
        self.converge_timeout = converge_timeout
        self.prefix = f"{NAME}-{run.id[-6:]}"
        self.names = [f"{self.prefix}-h{i}" for i in range(4)]
        self.skewed, self.restarted, self.disk_host = self.names[0], self.names[1], self.names[2]
        self.workdir = os.path.join(run.workdir, NAME)
        self.node: RabbitNode | None = None
        self.pair: PgPair | None = None
        self.daemons: list[Daemon] = []
        self.pipeline: Pipeline | None = None
        self.load: SteadyLoad | None = None
        self.engine: sa.Engine | None = None
        self.clocks: dict[str, FakeClock] = {}
        self.tmpfs_path: str | None = None
        self._filler: threading.Thread | None = None
        self._filling = threading.Event()
        self.evidence: dict = {}  # what shows that the fault running now happened
        self._log_marks: dict[str, int] = {}
        self._unwritten: dict[str, float] = {}

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> "FaultRun":
        self.run.on_cleanup(self.close)
        os.makedirs(self.workdir, exist_ok=True)
        self.node = RabbitNode(base_dir=None).start()
        self.pair = PgPair().start()
        database = f"lifecycle_bench_{self.run.id.replace('-', '_')}_{NAME}"
        self.pair.create_database(database)
        url = self.pair.multi_host_url(database)
        # The reader's own engine: no timeouts, to see the database whatever it does.
        self.engine = sa.create_engine(url, pool_size=2, pool_pre_ping=True,
                                       connect_args={"connect_timeout": 3})
        self.pipeline = Pipeline(
            os.path.join(self.workdir, "pipeline"), exchange=EXCHANGE, queue=QUEUE,
            database=url, heartbeat_interval=1.0, host_down_after=30.0,
            consumer_options={"DEFAULT": {"transport_url": self.node.transport_url},
                              "consumer": {"retry_interval_max": 2.0}})
        self.pipeline.db_sync()
        self.pipeline.start_consumer(timeout=60)
        for name in self.names:
            self.daemons.append(Daemon(self.workdir, name).start())
        for daemon in self.daemons:
            daemon.hold(self.domains)
        for name in (self.skewed, self.restarted):
            directory = os.path.join(self.workdir, f"clock-{name}")
            os.makedirs(directory, exist_ok=True)
            self.clocks[name] = FakeClock(directory)
        self.tmpfs_path = os.path.join(self.pipeline.workdir, f"agent-{self.disk_host}")
        _mount_tmpfs(self.tmpfs_path, "4m")
        for daemon in self.daemons:
            self._start_agent(daemon.host)
        self.load = SteadyLoad(self.daemons, self.domains, self.rate)
        return self

    def _start_agent(self, host: str, wait: bool = True) -> None:
        """Start ``host``'s agent; with ``wait``, return once its start inventory is in
        the database."""
        uri = next(d.uri for d in self.daemons if d.host == host)
        clock = self.clocks.get(host)
        self.pipeline.start_agent(
            host, uri, wait=wait, timeout=60, env=clock.env() if clock else None,
            groups={"DEFAULT": {"transport_url": self.node.transport_url}},
            inventory_interval=0, broker_retry_interval_max=2.0)

    def close(self) -> None:
        """Everything the run started, in reverse; each step whatever the others did."""
        steps = [
            lambda: self.load and self.load.close(),
            self._stop_filling,
            lambda: self.pipeline and self.pipeline.stop(),
            lambda: self.tmpfs_path and os.path.ismount(self.tmpfs_path)
            and tmpfs.unmount(self.tmpfs_path),
            *[daemon.stop for daemon in reversed(self.daemons)],
            lambda: self.engine and self.engine.dispose(),
            lambda: self.pair and self.pair.destroy(),
            lambda: self.node and self.node.stop(),
        ]
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - clean up the rest regardless
                print(f"bench: {NAME}: clean-up step failed: {exc}", flush=True)

    # -- one fault ----------------------------------------------------------------------------
    def fault(self, name: str, seconds: float) -> FaultResult:
        self.evidence = {}
        apply, heal, *after = self._faults()[name]
        since = self._positions()  # the pipeline is quiet: every number so far is heard
        dead0 = self.dead_letters()
        self._mark_logs()
        self.load.start()
        time.sleep(1.0)  # the load runs before the fault, as it does in production
        steps0 = dict(self.load.steps)
        t0, started_at = time.monotonic(), time.time()
        note = apply(seconds) or ""
        steps1 = dict(self.load.steps)
        healed_at = time.time()
        heal_note = heal() or ""  # returns once the heal is in effect, confirming nothing
        t_heal = time.monotonic()
        # What the database must come to say is libvirt's state at the heal; the next
        # fault's first second of load (or the last stretch) shows that it goes on.
        self.load.stop()
        check, clean_at = self._converge(since, _naive_utc(time.time() + QUIET_MARGIN))
        converge = clean_at - t_heal
        notes = [note, heal_note] + [observe() or "" for observe in after]
        v = check.verdict
        events = sum(steps1.get(h, 0) - steps0.get(h, 0) for h in self.names)
        return FaultResult(
            fault=name, seconds=t_heal - t0, events=events, stamped=v.stamped, lost=check.lost,
            applied_twice=v.applied_twice, out_of_order=v.out_of_order,
            difference=v.difference, dead_letters=self.dead_letters() - dead0,
            not_written=check.not_written, gaps=v.lost, converge_seconds=converge,
            converged=check.clean,
            applied_during=self._journaled_between(started_at, healed_at),
            note="; ".join(n for n in notes if n), evidence=self.evidence,
            lost_examples=v.lost_examples, difference_examples=v.difference_examples,
            started_at=started_at, healed_at=healed_at)

    def _positions(self) -> dict[str, tuple[int, int]]:
        """Each host's newest (epoch, seq) as the consumer heard it."""
        with self.engine.connect() as conn:
            return {r.name: (r.epoch, r.last_seq) for r in conn.execute(sa.text(
                "SELECT name, epoch, last_seq FROM hosts WHERE name LIKE :p"),
                {"p": self.prefix + "%"})}

    def _mark_logs(self) -> None:
        """Remember where each agent's log and unwritten counter stand at a fault's start."""
        for host in self.names:
            self._log_marks[host] = len(self.pipeline.log(f"agent-{host}"))
            self._unwritten[host] = self._scrape(host).get(UNWRITTEN, 0.0)

    def _scrape(self, host: str) -> dict[str, float]:
        try:
            return self.pipeline.scrape(f"agent-{host}")
        except OSError:
            return {}  # restarting: asked again at the next look

    def _not_written(self) -> int:
        """Numbers stamped since the fault began that the agents' outboxes refused:
        events (their counters; a restart starts one from 0) and inventories (logged)."""
        total = 0
        for host in self.names:
            now = self._scrape(host).get(UNWRITTEN, self._unwritten[host])
            total += int(now - self._unwritten[host] if now >= self._unwritten[host] else now)
            log = self.pipeline.log(f"agent-{host}")[self._log_marks[host]:]
            total += len(agent_lineage.inventories_not_written(log, host))
        return total

    def _converge(self, since: dict[str, tuple[int, int]],
                  quiet_since: datetime.datetime) -> tuple[Check, float]:
        """Look until the checker is clean with every agent's last numbers known (its
        heartbeats since the changes stopped); the last look, and when the looks began
        to be clean (a heartbeat a second later only confirms what the database
        already said)."""
        deadline = time.monotonic() + self.converge_timeout
        clean_since = None
        while True:
            looked_at = time.monotonic()
            check = self.check(since, quiet_since)
            if dataclasses.replace(check, heard=True).clean:
                clean_since = clean_since if clean_since is not None else looked_at
            else:
                clean_since = None
            if check.clean or time.monotonic() > deadline:
                return check, clean_since if check.clean else time.monotonic()
            time.sleep(0.1)

    def check(self, since: dict[str, tuple[int, int]],
              quiet_since: datetime.datetime) -> Check:
        """The checker over everything the agents stamped after ``since`` (per host),
        against the journal, the instances and libvirt."""
        libvirt = self.load.states()
        with self.engine.connect() as conn:
            hosts = {r.name: r for r in conn.execute(sa.text(
                "SELECT name, epoch, last_seq, last_heartbeat_at, clock_offset FROM hosts "
                "WHERE name LIKE :p"), {"p": self.prefix + "%"})}
            journal, applied, rows = journal_state.read(conn, self.prefix)
        stamped, heard = [], True
        for host in self.names:
            lineage = agent_lineage.spans(self.pipeline.log(f"agent-{host}"), host)
            row = hosts.get(host)
            position = (row.epoch, row.last_seq) if row is not None else (0, 0)
            stamped += agent_lineage.stamped(host, lineage, since.get(host, (0, 0)), position)
            running = lineage[-1] if lineage and lineage[-1].last_seq is None else None
            if running is None and self.pipeline.running(f"agent-{host}"):
                heard = False  # started, and not yet said so
            elif running is not None and (row is None or row.epoch != running.epoch
                                          or not _beat_since(row, quiet_since)):
                heard = False  # its last numbers are not known yet
        verdict = checker.check(stamped, journal, applied, rows, libvirt)
        return Check(verdict, heard, self._not_written())

    def whole_run(self, seconds: float = 2.0) -> Check:
        """A last stretch of load after the last heal, then the checker over everything
        stamped since the agents started (not written counted over the whole run, from
        their logs and counters)."""
        for host in self.names:
            self._log_marks[host] = 0
            self._unwritten[host] = 0.0
        self.load.start()
        time.sleep(seconds)
        self.load.stop()
        check, _ = self._converge({h: (0, 0) for h in self.names},
                                  _naive_utc(time.time() + QUIET_MARGIN))
        return check

    def _journaled_between(self, start: float, end: float) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT count(*) FROM journal WHERE host LIKE :p AND applied_at >= :a "
                "AND applied_at <= :b"),
                {"p": self.prefix + "%", "a": _naive_utc(start), "b": _naive_utc(end)}).scalar()

    def _first_commit_after(self, moment: float) -> float | None:
        """When the consumer first committed after ``moment`` (wall clock), or None."""
        with self.engine.connect() as conn:
            first = conn.execute(sa.text(
                "SELECT min(applied_at) FROM journal WHERE applied_at > :m"),
                {"m": _naive_utc(moment)}).scalar()
        return None if first is None else first.replace(
            tzinfo=datetime.timezone.utc).timestamp()

    def dead_letters(self) -> int:
        for line in self.node.ctl("list_queues", "name", "messages", timeout=30).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == f"{QUEUE}.dlq":
                return int(parts[1])
        return 0  # not declared yet: nothing dead-lettered

    # -- the faults ---------------------------------------------------------------------------
    def _faults(self) -> dict[str, tuple[Callable[..., str | None], ...]]:
        """Each fault's (apply, heal[, observe]): apply holds the fault for its seconds;
        heal returns once the heal is in effect; observe looks, once the pipeline has
        converged, at what the heal did. Each puts in ``self.evidence`` what shows that
        the fault happened."""
        skewed, restarted = self.clocks[self.skewed], self.clocks[self.restarted]
        evidence = self.evidence
        h_skewed, h_restarted, h_disk = (self._short(h) for h in
                                         (self.skewed, self.restarted, self.disk_host))

        def skew(seconds):
            skewed.set(+200)
            restarted.set(-40)
            time.sleep(seconds)
            evidence["clock_offsets_seen"] = self._offsets()
            return (f"{h_skewed} +200 s, {h_restarted} -40 s; offsets the consumer saw: "
                    + _offsets_text(evidence["clock_offsets_seen"]))

        def unskew():
            skewed.set(0)
            restarted.set(0)

        def step_back(seconds):
            time.sleep(seconds / 2)
            skewed.set(-120)
            time.sleep(seconds / 2)
            evidence["clock_offsets_seen"] = self._offsets()
            return (f"{h_skewed} stepped back 120 s mid-fault; offsets the consumer saw: "
                    + _offsets_text(evidence["clock_offsets_seen"]))

        def restart_ahead(seconds):
            self.pipeline.stop_process(f"agent-{self.restarted}")
            restarted.set(+7200)
            self._start_agent(self.restarted)
            time.sleep(seconds)
            evidence["epoch_ahead"] = self._epoch(self.restarted)
            evidence["clock_offsets_seen"] = self._offsets()
            return (f"{h_restarted} restarted 7,200 s ahead: epoch {evidence['epoch_ahead']}, "
                    "offsets the consumer saw: "
                    + _offsets_text(evidence["clock_offsets_seen"]))

        def restart_right():
            self.pipeline.stop_process(f"agent-{self.restarted}")
            restarted.set(0)
            self._start_agent(self.restarted, wait=False)

        def restarted_right():
            evidence["epoch_right"] = self._epoch(self.restarted)
            return f"then with the right clock: epoch {evidence['epoch_right']}"

        held = {}

        def stall(seconds):
            conn = self.engine.connect()
            held["conn"] = conn
            conn.begin()
            conn.exec_driver_sql("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
            time.sleep(seconds)
            waiting = held["conn"].exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE relation = 'instances'::regclass "
                "AND NOT granted").scalar()
            evidence["lock_waiters"] = waiting
            return (f"instances locked ACCESS EXCLUSIVE by another session; {waiting} "
                    "sessions waiting for it at the end")

        def release():
            conn = held.pop("conn")
            conn.rollback()
            conn.close()

        def failover(seconds):
            t = time.monotonic()
            promoted = self.pair.promote() - t
            self.pair.stop_primary()
            stopped, stopped_at = time.monotonic() - t, time.time()
            time.sleep(seconds)
            back = self._first_commit_after(stopped_at)
            evidence["consumer_back_after_s"] = None if back is None else back - stopped_at
            return (f"standby promoted in {promoted:.1f}s, old primary stopped "
                    f"{stopped:.1f}s after the promotion began; the consumer committed on "
                    "the new primary " + (f"{back - stopped_at:.1f}s after the stop"
                                          if back is not None else "not yet"))

        def disk_alarm(seconds):
            self.node.ctl("set_disk_free_limit", "100000GB")
            t = time.monotonic()
            harness.wait_for(lambda: "disk" in self._alarms(), 30, "the disk alarm",
                             interval=0.2)
            raised = time.monotonic() - t
            harness.wait_for(lambda: any(self._scrape(h).get(BLOCKED) for h in self.names),
                             30, "an agent blocked by the broker", interval=0.2)
            time.sleep(max(0.0, seconds - (time.monotonic() - t)))
            blocked = sum(1 for h in self.names if self._scrape(h).get(BLOCKED))
            evidence["agents_blocked"] = blocked
            return f"alarm raised in {raised:.1f}s, {blocked} of {len(self.names)} agents blocked"

        def disk_alarm_clear():
            self.node.ctl("set_disk_free_limit", "50MB")

        def disk_alarm_cleared():
            evidence["alarm_cleared"] = "disk" not in self._alarms()
            return None if evidence["alarm_cleared"] else "the disk alarm is still raised"

        nacks = {}

        def nack_storm(seconds):
            nacks["before"] = self._nacks()
            self.node.ctl("set_policy", "--apply-to", "queues", NACK_POLICY, f"^{QUEUE}$",
                          '{"max-length": 0, "overflow": "reject-publish"}')
            time.sleep(seconds)
            evidence["nacks"] = int(self._nacks() - nacks["before"])
            return f"{evidence['nacks']} nacks received by the agents"

        def nack_storm_end():
            self.node.ctl("clear_policy", NACK_POLICY)

        def disk_full(seconds):
            # A trickle fits in the pages and the WAL the outbox already has: bursts of
            # changes (a host evacuated on a full disk) need room it has not got.
            # A burst every DISK_BURST_EVERY seconds, the steady stream between them.
            t = time.monotonic()
            self._start_filling()
            base, bursts = self._unwritten[self.disk_host], 0
            while time.monotonic() - t < seconds:
                self.load.burst(self.disk_host, DISK_BURST)
                bursts += 1
                time.sleep(max(0.0, min(DISK_BURST_EVERY, seconds - (time.monotonic() - t))))
            metrics = self._scrape(self.disk_host)
            evidence["bursts"] = bursts
            evidence["unwritten_at_heal"] = int(metrics.get(UNWRITTEN, 0) - base)
            evidence["outbox_writable_at_heal"] = bool(metrics.get(WRITABLE, 1))
            return (f"{h_disk}'s outbox disk kept full, {bursts} bursts of {DISK_BURST} "
                    f"changes on it; {evidence['unwritten_at_heal']} events not written by "
                    "the heal; the outbox "
                    + ("took writes again by itself before the heal (room in its own files)"
                       if evidence["outbox_writable_at_heal"] else
                       "still refused writes at the heal"))

        def disk_freed():
            self._stop_filling()

        return {
            "clock-skew": (skew, unskew),
            "clock-step-back": (step_back, lambda: skewed.set(0)),
            "start-two-hours-ahead": (restart_ahead, restart_right, restarted_right),
            "database-stall": (stall, release),
            "postgresql-failover": (failover, lambda: None),
            "broker-disk-alarm": (disk_alarm, disk_alarm_clear, disk_alarm_cleared),
            "nack-storm": (nack_storm, nack_storm_end),
            "outbox-disk-full": (disk_full, disk_freed),
        }

    def _short(self, host: str) -> str:
        return host.rsplit("-", 1)[1]

    def _offsets(self) -> dict[str, float | None]:
        """The clock offsets the consumer last saw in the clocked hosts' heartbeats."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT name, clock_offset FROM hosts WHERE name IN (:a, :b) ORDER BY name"),
                {"a": self.skewed, "b": self.restarted}).all()
        return {self._short(name): offset for name, offset in rows}

    def _epoch(self, host: str) -> int | None:
        lineage = agent_lineage.spans(self.pipeline.log(f"agent-{host}"), host)
        return lineage[-1].epoch if lineage else None

    def _alarms(self) -> str:
        return self.node.ctl("eval", "rabbit_alarm:get_alarms().", timeout=30)

    def _nacks(self) -> float:
        return sum(self._scrape(h).get(NACKS, 0.0) for h in self.names)

    def _start_filling(self) -> None:
        """Fill the disk host's tmpfs, and keep it full (what the outbox frees, by a
        checkpoint or a delete, is taken again), until _stop_filling."""
        self._filling.set()
        tmpfs.fill(self.tmpfs_path)

        def keep_full():
            while self._filling.is_set():
                tmpfs.fill(self.tmpfs_path)
                time.sleep(0.1)  # the filler's pace: whatever was freed meanwhile
        self._filler = threading.Thread(target=keep_full, name="faults-filler", daemon=True)
        self._filler.start()

    def _stop_filling(self) -> None:
        self._filling.clear()
        if self._filler is not None:
            self._filler.join(30)
            self._filler = None
        if self.tmpfs_path is not None:
            filler = os.path.join(self.tmpfs_path, "filler")
            if os.path.exists(filler):
                os.remove(filler)


def _mount_tmpfs(path: str, size: str) -> None:
    """A tmpfs of ``size`` on ``path``; BenchError where it cannot be mounted."""
    try:
        tmpfs.mount(path, size)
    except tmpfs.MountError as exc:
        raise BenchError(str(exc)) from exc


def _offsets_text(offsets: dict[str, float | None]) -> str:
    return ", ".join(f"{h} {o:+.0f} s" if o is not None else f"{h} -"
                     for h, o in offsets.items())


def _beat_since(host_row, moment: datetime.datetime) -> bool:
    """Whether the host's last heartbeat was built at or after ``moment`` (naive UTC):
    its arrival less the host's clock offset, which the heals have set right again.
    (Its arrival alone would not do: a heartbeat queued behind a backlog arrives late
    with the number it was built with.)"""
    if host_row.last_heartbeat_at is None:
        return False
    built = host_row.last_heartbeat_at + datetime.timedelta(
        seconds=host_row.clock_offset or 0.0)
    return built >= moment


def _naive_utc(moment: float) -> datetime.datetime:
    """A wall-clock time as the journal and the hosts table store it (naive UTC)."""
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).replace(tzinfo=None)


def fault_table(results: list[FaultResult]) -> str:
    """One row per fault: what the run's JSON keeps of it."""
    columns = ["fault", "seconds", "events", "applied during", "lost", "twice",
               "out of order", "db != libvirt", "dead letters", "not written (agent)",
               "converge s", "clean"]
    rows = [{"fault": r.fault, "seconds": f"{r.seconds:.0f}", "events": r.events,
             "applied during": r.applied_during, "lost": r.lost, "twice": r.applied_twice,
             "out of order": r.out_of_order, "db != libvirt": r.difference,
             "dead letters": r.dead_letters, "not written (agent)": r.not_written,
             "converge s": f"{r.converge_seconds:.1f}", "clean": r.clean}
            for r in results]
    return tables.table(rows, columns, right=columns[1:-1])


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    faults = SHORT if run.profile.quick else FULL
    runner = FaultRun(run).start()
    results = []
    for name, seconds in faults.items():
        result = runner.fault(name, seconds)
        print(f"   {name}: {result.events} events, {result.lost} lost, converged "
              f"{result.converge_seconds:.1f}s after the heal; {result.note}", flush=True)
        results.append(result)
    whole = runner.whole_run()
    runner.close()
    print(fault_table(results), flush=True)
    rows = []
    for r in results:
        rows.append(Row(NAME, f"{r.fault}: seconds to converge after the heal", "s",
                        r.converge_seconds, met=r.clean,
                        note=f"{r.events} events in {r.seconds:.0f}s, {r.applied_during} "
                             f"applied before the heal; {r.lost} lost, {r.applied_twice} "
                             f"twice, {r.out_of_order} out of order, {r.difference} differ, "
                             f"{r.dead_letters} dead-lettered, {r.not_written} not written "
                             "(counted by the agent)" + (f"; {r.note}" if r.note else "")))
    v = whole.verdict
    rows.append(Row(NAME, "whole run: every number stamped accounted for", "",
                    1.0 if whole.clean else 0.0, met=whole.clean,
                    note=f"{v.stamped} stamped, {whole.lost} lost, {whole.not_written} not "
                         f"written (counted), {v.applied_twice} twice, {v.difference} differ"))
    details = {"rate": runner.rate, "hosts": len(runner.names),
               "domains_per_host": runner.domains,
               "faults": [{**dataclasses.asdict(r), "clean": r.clean} for r in results],
               "whole_run": {**dataclasses.asdict(v), "lost_not_counted": whole.lost,
                             "not_written": whole.not_written, "clean": whole.clean}}
    return ScenarioResult(NAME, rows, details)
