"""Simulated compute hosts: the agent's own code, one ``Agent`` per host, each watching
its own private libvirt test hypervisor, and the load that changes their domains.

``test:///<absolute path to a node XML>`` gives every connection a private fake
hypervisor built from that file (``test:///default`` is shared by the whole process),
so each host gets a node file listing its domains, all running at start, and the load
is driven through the agent's own connection (``agent.source._conn``): every event is
emitted by libvirt and reaches the agent's callback exactly as a real one would.

Run as ``python -m benchmarks.hosts --spec JSON`` this module serves JSON-line commands
on stdin/stdout (see ``serve``), so the agents run in a process of their own and their
memory can be read from /proc.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid

from oslo_config import cfg

from lifecycle_common import memory

# One step of a domain's cycle, from running: the libvirt call and the power state the
# database must then show. Every call makes libvirt emit exactly one lifecycle event.
CYCLE = (("suspend", "paused"), ("resume", "running"), ("destroy", "shutdown"),
         ("create", "running"))
_NAMESPACE = uuid.UUID("6f1f3a52-1d7e-4a59-9a43-0c55b1b1e7a0")


def domain_uuid(host: str, index: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{host}/{index}"))


def domain_name(host: str, index: int) -> str:
    return f"{host}-d{index:04d}"


def node_xml(host: str, domains: int) -> str:
    """A test-driver node with ``domains`` running domains (libvirt starts them)."""
    parts = ["<node>"]
    for i in range(domains):
        parts.append(f"<domain type='test'><name>{domain_name(host, i)}</name>"
                     f"<uuid>{domain_uuid(host, i)}</uuid><memory>65536</memory>"
                     "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")
    parts.append("</node>")
    return "".join(parts)


def agent_conf(host: str, uri: str, state_path: str, exchange: str, transport_url: str,
               rabbit_opts: dict | None = None, metrics_port: int = 0,
               **agent_opts) -> cfg.ConfigOpts:
    """``metrics_port``: where this agent serves /metrics (0: nowhere)."""
    from lifecycle_publisher import config as agent_config
    return agent_config.in_code(
        {"host": host, "transport_url": transport_url, "control_exchange": exchange,
         "state_path": state_path},
        libvirt={"connection_uri": uri}, agent=agent_opts,
        oslo_messaging_rabbit=rabbit_opts or {}, metrics={"bind_port": metrics_port})


class SimulatedHost:
    """One agent on its own test hypervisor, and the domains the load changes."""

    def __init__(self, name: str, workdir: str, domains: int, exchange: str,
                 transport_url: str, agent_opts: dict, rabbit_opts: dict | None = None,
                 metrics_port: int = 0):
        from lifecycle_publisher.cmd import build_agent
        self.name = name
        state_path = os.path.join(workdir, name)
        os.makedirs(state_path, exist_ok=True)
        node = os.path.join(state_path, "node.xml")
        with open(node, "w") as f:
            f.write(node_xml(name, domains))
        self.agent = build_agent(agent_conf(name, f"test://{node}", state_path, exchange,
                                            transport_url, rabbit_opts, metrics_port,
                                            **agent_opts))
        self.thread = threading.Thread(target=self.agent.run, name=f"agent-{name}")
        self.domains: list = []
        self.position: list[int] = []  # each domain's next step in CYCLE
        self.base_seq = 0
        self.steps = 0

    def start(self) -> None:
        self.thread.start()

    def ready(self) -> bool:
        """Connected, and the start inventory confirmed by the broker."""
        conn = self.agent.source._conn
        return conn is not None and self.agent.publisher.confirmed >= 1

    def take_domains(self) -> None:
        conn = self.agent.source._conn
        self.domains = sorted(conn.listAllDomains(), key=lambda d: d.name())
        self.position = [0] * len(self.domains)
        self.base_seq = self.agent.sequencer.last  # the start inventory's

    @property
    def expected_seq(self) -> int:
        """The sequence number of this host's last event once libvirt has reported
        every step taken so far (each step is one event, one number)."""
        return self.base_seq + self.steps

    def step(self, index: int) -> str:
        """Move domain ``index`` one step along CYCLE; returns its expected power state."""
        op, state = CYCLE[self.position[index]]
        getattr(self.domains[index], op)()
        self.position[index] = (self.position[index] + 1) % len(CYCLE)
        self.steps += 1
        return state

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(60)


class Hosts:
    """A set of simulated hosts and the commands the benchmarks send them."""

    def __init__(self, names: list[str], workdir: str, domains: int, exchange: str,
                 transport_url: str, agent_opts: dict, rabbit_opts: dict | None = None):
        self.hosts = [SimulatedHost(n, workdir, domains, exchange, transport_url, agent_opts,
                                    rabbit_opts)
                      for n in names]
        self.domains = domains

    # -- counters --------------------------------------------------------------------
    def confirmed(self) -> int:
        return sum(h.agent.publisher.confirmed for h in self.hosts)

    def written(self) -> int:
        return sum(h.agent.writer.written for h in self.hosts)

    def stats(self) -> dict:
        return {"confirmed": self.confirmed(), "written": self.written(),
                "outbox_pending": sum(h.agent.outbox.pending() for h in self.hosts),
                "heartbeats": sum(h.agent.publisher.heartbeats_sent for h in self.hosts),
                # Broker connections opened: each one after the first sends again what
                # was in flight (copies the consumer drops) and begins with a heartbeat.
                "sessions": sum(h.agent.publisher.sessions for h in self.hosts),
                "last_seq": {h.name: h.agent.sequencer.last for h in self.hosts},
                "expected_seq": {h.name: h.expected_seq for h in self.hosts},
                "epoch": {h.name: h.agent.epoch for h in self.hosts}}

    # -- commands --------------------------------------------------------------------
    def start(self, ready_timeout: float = 90.0) -> dict:
        for h in self.hosts:
            h.start()
        deadline = time.monotonic() + ready_timeout
        while not all(h.ready() for h in self.hosts):
            if time.monotonic() > deadline:
                raise TimeoutError("agents not connected with their inventory confirmed "
                                   f"after {ready_timeout}s")
            time.sleep(0.02)
        for h in self.hosts:
            h.take_domains()
        memory.freeze_startup_objects()  # as lifecycle-agent does once set up
        return self.stats()

    def burst(self, steps: int, parallel: bool, wait_confirmed: bool,
              confirm_timeout: float = 120.0, only: list[str] | None = None) -> dict:
        """Every domain of every host (of the hosts named in ``only``) takes ``steps``
        steps as fast as libvirt goes: one thread interleaving the hosts, or
        (``parallel``) one thread per host, all released at once. With
        ``wait_confirmed``, returns once the broker confirmed every resulting event."""
        hosts = self.hosts if only is None else [h for h in self.hosts if h.name in only]
        if not hosts:
            now = time.time()
            return {"events": 0, "t_start": now, "t_emitted": now, "expected_state": None,
                    "at_emitted": {}, **self.stats()}
        base = self.confirmed()
        base_written = self.written()
        base_stamped = sum(h.agent.sequencer.last for h in self.hosts)
        events = steps * self.domains * len(hosts)
        started: list[float] = []
        expected: list[str] = []

        def run_host(host: SimulatedHost, barrier: threading.Barrier) -> None:
            barrier.wait()
            for _ in range(steps):
                for i in range(len(host.domains)):
                    state = host.step(i)
            expected.append(state)

        if parallel:
            barrier = threading.Barrier(len(hosts) + 1)
            threads = [threading.Thread(target=run_host, args=(h, barrier)) for h in hosts]
            for t in threads:
                t.start()
            started.append(time.time())
            barrier.wait()
            for t in threads:
                t.join()
        else:
            started.append(time.time())
            for _ in range(steps):
                for i in range(self.domains):
                    for h in hosts:
                        state = h.step(i)
            expected.append(state)
        emitted = time.time()
        # Where the pipeline stood when libvirt had emitted the last event.
        backlog = {"stamped": sum(h.agent.sequencer.last for h in self.hosts) - base_stamped,
                   "written": self.written() - base_written,
                   "confirmed": self.confirmed() - base}
        result = {"events": events, "t_start": started[0], "t_emitted": emitted,
                  "expected_state": expected[0], "at_emitted": backlog}
        if wait_confirmed:
            result["t_confirmed"] = self._wait_confirmed(base + events, confirm_timeout)
            # Confirmed rows leave the outbox a moment later (deletes are batched);
            # counted apart, so that the time above stays the broker's.
            result["outbox_drained"] = self._wait_outbox_empty(10.0)
        result.update(self.stats())
        return result

    def _wait_confirmed(self, target: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while self.confirmed() < target:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)
        return time.time()

    def _wait_outbox_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while any(h.agent.outbox.pending() for h in self.hosts):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def steady(self, rate: float, seconds: float) -> dict:
        """Change domains at ``rate`` events/s for ``seconds``, spread evenly over the
        hosts (round robin) and over each host's domains."""
        total = int(rate * seconds)
        order = [(h, i) for i in range(self.domains) for h in self.hosts]
        done = 0
        late = 0.0
        t0 = time.perf_counter()
        wall0 = time.time()
        while done < total:
            now = time.perf_counter()
            due = min(total, int((now - t0) * rate) + 1)
            if due - done > 1:
                late = max(late, (due - done - 1) / rate)
            while done < due:
                host, index = order[done % len(order)]
                host.step(index)
                done += 1
            pause = t0 + done / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        elapsed = time.perf_counter() - t0
        return {"events": total, "t_start": wall0, "seconds": elapsed,
                "rate": total / elapsed if elapsed else 0.0, "max_behind_s": late,
                **self.stats()}

    def wait_confirmed(self, target: int, confirm_timeout: float) -> dict:
        return {"t_confirmed": self._wait_confirmed(target, confirm_timeout), **self.stats()}

    def states(self) -> dict:
        """Every domain's power state as libvirt has it now, as the database should:
        {host: {uuid: power_state}}."""
        from lifecycle_publisher.translation import power_state_of
        result = {}
        for h in self.hosts:
            conn = h.agent.source._conn
            if conn is None:
                raise RuntimeError(f"host {h.name}: its agent has no libvirt connection "
                                   f"({h.agent.failure or 'reconnecting'})")
            result[h.name] = {dom.UUIDString(): power_state_of(*dom.state()).value
                              for dom in conn.listAllDomains()}
        return {"states": result}

    def stop(self) -> dict:
        for h in self.hosts:
            h.agent.stop()
        for h in self.hosts:
            h.thread.join(60)
        return {"stopped": True}


def serve(hosts: Hosts, inp, out) -> None:
    """One JSON command per line in, one JSON reply per line out, until ``stop``."""
    for line in inp:
        request = json.loads(line)
        command = request.pop("cmd")
        try:
            reply = {"ok": True, **getattr(hosts, command)(**request)}
        except Exception as exc:  # noqa: BLE001 - reported to the harness, which fails the run
            logging.exception("command %s failed", command)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if command == "stop":
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="JSON: hosts, workdir, domains, ...")
    spec = json.loads(parser.parse_args().spec)
    logging.basicConfig(level=os.environ.get("LIFECYCLE_BENCH_LOG_LEVEL", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s")
    memory.limit_malloc_arenas()  # as lifecycle-agent does, before the agents' threads
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr  # nothing but replies on the reply channel
    hosts = Hosts(spec["hosts"], spec["workdir"], spec["domains"], spec["exchange"],
                  spec["transport_url"], spec.get("agent_opts", {}), spec.get("rabbit_opts"))
    serve(hosts, sys.stdin, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
