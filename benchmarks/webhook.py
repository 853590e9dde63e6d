"""webhook: events/s one ``lifecycle-webhook`` process delivers from a full queue to an
endpoint that accepts at once; 20,000 instance events over 2,000 instances.

The queue is filled through the real path, as ``apply`` fills its own: 4 agents
(``benchmarks.hosts``), each on its own test hypervisor with 500 running domains, stamp,
store and publish every domain's suspend, resume, destroy and create, 10 steps a domain
(--quick: 2), the hosts' domains interleaved: an instance's next event is 2,000 messages
further in the queue, beyond the service's prefetch (1,000), so the service holds one
event per instance at a time and no request waits for its instance's previous one: this
measures the pipe, not an instance's order holding it up. The hosts' process costs a few
seconds of start and fill, and it is stopped before anything is measured; publishing
pre-encoded notifications instead would have taken a second writer of the wire format.
Each ``[webhook] max_in_flight`` measured (16, 64) has a webhook queue of its own bound
before the fill, declared as the service declares it, so every measure drains the same
messages; the start inventories are purged first (the service would acknowledge them
undelivered: ``event_types`` is ``instance.*``).

Each measure starts a receiver (``benchmarks.fast_receiver``: a process of its own, so
that it does not share the service's GIL; it answers 204 at once without verifying,
since verifying is the subscriber's cost) and then the service, as a real process on a
configuration file of its own. The clock runs from the receiver's first request to the
request that gave it the last distinct CloudEvent id (``webhook-id``); every event must
have arrived at least once (distinct ids = events), or the scenario fails. The service
is then stopped with SIGTERM and its queue must be empty: every message acknowledged.

The limit, in the same run: a copy of the same messages on a queue bound beside the
webhook's, consumed and acknowledged with no HTTP (``benchmarks.raw_consume``, with the
service's prefetch and its batch of acks). What bounds the service otherwise: after
each measure, a trivial client (``fast_receiver``'s client role: threads with
persistent ``http.client`` connections, as many as ``max_in_flight``, doing nothing
else) posts to the same receiver; its rate is what Python's own HTTP client gets from
this receiver on this machine with that concurrency, and the receiver's CPU per request
says how far the receiver itself is from being the bound.
"""

from __future__ import annotations

import base64
import os
import select
import signal
import socket
import subprocess
import time
import urllib.request

from benchmarks import harness
from benchmarks.harness import BenchError, HostsProcess, Row, Run, ScenarioResult
from consumer.topology import Topology, declare
from lab.pipeline import command
from lifecycle_webhook import cmd as webhook_cmd
from lifecycle_webhook import config as webhook_config

NAME = "webhook"
LIMIT_LABEL = "consume & ack, no HTTP"
METRICS = "lifecycle_webhook_"  # the service's /metrics
DELIVERED = METRICS + "events_delivered_total"
RECONNECTS = METRICS + "broker_reconnects_total"
TIMEOUT = 300.0  # seconds a measure may take before the scenario fails


def run(run: Run, sampler: harness.RssSampler) -> ScenarioResult:
    p = run.profile
    exchange = run.name(NAME)
    queues = {n: _webhook_queue(run, exchange, run.name(NAME, f"mif{n}"))
              for n in p.webhook_in_flight}
    limit_queue = run.extra_queue(exchange, run.name(NAME, "limit"))
    events, fill = _fill(run, [*queues.values(), limit_queue])
    limit = harness.raw_consume(
        run, NAME, limit_queue, events, prefetch=_default("prefetch"),
        ack_every=webhook_cmd.BATCH, timeout=TIMEOUT,
        cpu_sources=lambda pids: _with_broker({"consumer": harness.CpuMeter.of_pids(pids)}))
    phases = [_measure(run, sampler, exchange, queues[n], n, events)
              for n in p.webhook_in_flight]

    rows = []
    for ph in phases:
        n = ph["max_in_flight"]
        rows.append(Row(NAME, f"events/s delivered (max_in_flight {n})", "events/s",
                        ph["rate"], limit=limit["rate"], limit_label=LIMIT_LABEL,
                        note=_note(ph)))
        rows.append(Row(NAME, f"CPU per event: lifecycle-webhook (max_in_flight {n})", "us",
                        ph["cpu_us_per_event"]["webhook"], higher_is_better=False,
                        limit=limit["cpu_us_per_event"]["consumer"], limit_label=LIMIT_LABEL,
                        note=f"{ph['cpu_share']['webhook']:.2f} of a core"))
        client = ph["client"]
        rows.append(Row(NAME, f"trivial Python client -> the receiver, {n} at once",
                        "requests/s", client["rate"],
                        note=f"CPU per request: receiver {client['receiver_us_per_request']:.0f} "
                             f"us, client {client['client_us_per_request']:.0f} us"))
    details = {"events": events, "fill": fill, "limit": limit, "phases": phases}
    return ScenarioResult(NAME, rows, details)


def _note(phase: dict) -> str:
    """e.g. ``20000 ids, 0 sent twice; receiver 0.31 of a core``; the service's broker
    reconnections, if any (what it had in flight then, it sends again)."""
    reconnects = int(phase["metrics"].get(RECONNECTS, 0))
    return (f"{phase['distinct']} ids, {phase['requests'] - phase['distinct']} sent twice"
            + (f" (broker reconnections: {reconnects})" if reconnects else "")
            + f"; receiver {phase['cpu_share']['receiver']:.2f} of a core")


# -- the queues and their fill ---------------------------------------------------------

def _webhook_queue(run: Run, exchange: str, queue: str) -> str:
    """``queue`` declared exactly as ``lifecycle-webhook`` declares its own (arguments
    that differ would stop it with PRECONDITION_FAILED), bound to ``exchange``."""
    topology = _topology(exchange, queue)
    with harness.broker() as channel:
        declare(channel, topology)
    run.track(queues=[topology.queue, topology.dead_letter_queue],
              exchanges=[topology.exchange, topology.dead_letter_exchange])
    return queue


def _topology(exchange: str, queue: str) -> Topology:
    # as lifecycle_webhook.cmd builds it from the configuration _write_conf writes
    return webhook_config.topology(exchange, queue, harness.ROUTING_KEY)


def _fill(run: Run, queues: list[str]) -> tuple[int, dict]:
    """Every domain of the hosts takes ``webhook_steps`` steps; returns the events the
    broker confirmed (each one instance event, one id) once every queue holds them."""
    p = run.profile
    names = [f"{NAME}-h{i:02d}" for i in range(p.webhook_hosts)]
    hosts = HostsProcess(run, f"{NAME}-hosts", names, p.webhook_domains, run.name(NAME),
                         heartbeat_interval=3600.0)
    try:
        hosts.call("start", timeout=180)
        with harness.broker() as channel:  # the start inventories: not delivered
            for queue in queues:
                channel.queue_purge(queue)
        fill = hosts.call("burst", timeout=600, steps=p.webhook_steps, parallel=False,
                          wait_confirmed=True, confirm_timeout=300.0)
    finally:
        hosts.close()  # (before counting: an agent that stops may publish once more)
    if fill["t_confirmed"] is None:
        raise BenchError("webhook: the agents did not get every event confirmed within 300 s")
    events = fill["events"]
    for queue in queues:
        queued, _ = harness.queue_counts(queue)
        if queued < events:  # more is no loss: copies after a reconnection, heartbeats
            raise BenchError(f"webhook: {queued} messages in {queue}, fewer than the "
                             f"{events} events the broker confirmed")
    return events, {"events": events, "seconds": fill["t_confirmed"] - fill["t_start"],
                    "sessions": fill["sessions"]}


# -- the limit -------------------------------------------------------------------------

def _default(option: str):
    return next(opt.default for opt in webhook_config.WEBHOOK_OPTS if opt.name == option)


def _with_broker(sources: dict) -> dict:
    broker_pid = harness.machine_broker_pid()
    if broker_pid is not None:
        sources["broker"] = harness.CpuMeter.of_pids([broker_pid])
    return sources


# -- one measure -----------------------------------------------------------------------

def _measure(run: Run, sampler: harness.RssSampler, exchange: str, queue: str,
             max_in_flight: int, events: int) -> dict:
    p = run.profile
    label = f"{NAME}-{max_in_flight}"
    queued, _ = harness.queue_counts(queue)
    receiver = harness.ModuleProcess(run, "fast_receiver", {
        "expected": events, "timeout": TIMEOUT}, f"{label}-receiver")
    url = f"http://127.0.0.1:{receiver.line(30)['port']}/hooks/lifecycle"
    metrics_port = _free_port()
    conf = _write_conf(run, label, exchange, queue, url, max_in_flight, metrics_port)
    service = _Service(run, label, conf)
    sampler.watch(label, service.proc.pid)
    harness.wait_for(lambda: harness.queue_counts(queue)[1] > 0, 30,
                     f"{label} to consume", interval=0.002, watch=service.check)
    meter = harness.CpuMeter(_with_broker({
        "webhook": harness.CpuMeter.of_pids([service.proc.pid]),
        "receiver": harness.CpuMeter.of_pids([receiver.pid])})).start()
    got = _result(receiver, service, TIMEOUT)
    used = meter.stop()
    if got["distinct"] != events:
        raise BenchError(f"webhook: the receiver got {got['distinct']} of {events} events "
                         f"({got['count']} requests) from {label} within {TIMEOUT:.0f}s "
                         f"(see {service.log_path})")
    counters = harness.wait_for(
        lambda: (m := _scrape(metrics_port)).get(DELIVERED, 0) >= events and m, 30,
        f"{label} to count every event accepted", ignoring=(OSError,))
    rss = harness.proc_status(service.proc.pid)
    status = service.stop()
    left, _ = harness.queue_counts(queue)  # unacked messages are back once it stopped
    if left:
        raise BenchError(f"webhook: {left} messages left on {queue} after {label} delivered "
                         f"every event and stopped (status {status}; see {service.log_path})")
    client = _client(run, label, url, max_in_flight, p.webhook_client_requests,
                     got["body_bytes"], receiver)
    receiver.kill()
    seconds = got["t_last"] - got["t_first"]
    return {"max_in_flight": max_in_flight, "events": events, "messages": queued,
            "seconds": seconds, "rate": events / seconds,
            "requests": got["count"], "distinct": got["distinct"],
            "connections": got["connections"], "body_bytes": got["body_bytes"],
            "metrics": counters, "left_on_queue": left, "exit_status": status,
            "cpu_us_per_event": {k: round(v / events * 1e6, 1) for k, v in used.items()},
            "cpu_share": {k: round(v / meter.wall, 2) for k, v in used.items()},
            "peak_rss_mb": rss.get("VmHWM"), "client": client}


def _write_conf(run: Run, label: str, exchange: str, queue: str, url: str,
                max_in_flight: int, metrics_port: int) -> str:
    secret_file = os.path.join(run.workdir, f"{label}.secret")
    with open(secret_file, "w") as f:
        f.write("whsec_" + base64.b64encode(os.urandom(32)).decode() + "\n")
    os.chmod(secret_file, 0o600)
    groups = {"DEFAULT": {"transport_url": harness.TRANSPORT_URL, "control_exchange": exchange},
              "webhook": {"url": url, "secret_file": secret_file, "queue_name": queue,
                          "max_in_flight": max_in_flight},
              "metrics": {"bind_host": "127.0.0.1", "bind_port": metrics_port}}
    path = os.path.join(run.workdir, f"{label}.conf")
    with open(path, "w") as f:
        f.write("".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                        for group, values in groups.items()))
    return path


class _Service:
    """``lifecycle-webhook --config-file CONF``, its output in the run's log."""

    def __init__(self, run: Run, label: str, conf: str):
        self.label = label
        self.log_path = os.path.join(run.workdir, f"{label}.log")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [command("lifecycle-webhook"), "--config-file", conf], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=harness.REPO,
                start_new_session=True)
        run.on_cleanup(self.kill)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with status {self.proc.returncode} "
                             f"(see {self.log_path})")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: the service settles what is in flight and acknowledges it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _result(receiver: harness.ModuleProcess, service: _Service, timeout: float) -> dict:
    """The receiver's report, failing early if the service exits meanwhile."""
    deadline = time.monotonic() + timeout + 10
    while time.monotonic() < deadline:
        ready, _, _ = select.select([receiver.proc.stdout], [], [], 1.0)
        if ready:
            return receiver.line(1.0)
        service.check()
    raise BenchError(f"{receiver.label} silent for {timeout + 10:.0f}s (see {receiver.log_path})")


def _scrape(port: int) -> dict[str, float]:
    """The service's own counters and gauges (not its histograms), keyed as Prometheus
    writes them: ``'lifecycle_webhook_requests_total{answer="2xx"}'``."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(METRICS) and family.type in ("counter", "gauge"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _client(run: Run, label: str, url: str, concurrency: int, requests: int,
            body_bytes: float, receiver: harness.ModuleProcess) -> dict:
    """The trivial client's rate against ``receiver``, with the receiver's CPU per
    request meanwhile."""
    client = harness.ModuleProcess(run, "fast_receiver", {
        "role": "client", "url": url, "concurrency": concurrency, "requests": requests,
        "body_bytes": round(body_bytes)}, f"{label}-client")
    meter = harness.CpuMeter({"receiver": harness.CpuMeter.of_pids([receiver.pid]),
                              "client": harness.CpuMeter.of_pids([client.pid])}).start()
    got = client.line(TIMEOUT)
    used = meter.stop()
    client.wait()
    if got["failed"]:
        raise BenchError(f"webhook: the trivial client's {got['failed']} requests failed "
                         f"(see {client.log_path})")
    return {**got, "receiver_us_per_request": used["receiver"] / requests * 1e6,
            "client_us_per_request": used["client"] / requests * 1e6}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
