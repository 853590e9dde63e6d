"""The dashboard's picture: the queries of etc/grafana/lifecycle-dashboard.json, run by a
real Prometheus over a few minutes of a real pipeline, plotted with matplotlib into
docs/dashboard.png (Grafana is not in Debian's packages; Prometheus is).

What runs: a consumer (a process) and the demo's agent (a process on libvirtd's shared
test hypervisor, driven with virsh through the demo's scenario), plus three simulated
hosts (the agent's own code, in this process, each on a private test hypervisor) under
a steady load with a burst; one of them loses its broker for a while (its outbox
fills, then drains), the demo's agent is killed and started again (its host goes down,
then up), and a few unreadable messages are dead-lettered. A lifecycle-webhook process
delivers every instance event to a receiver (lab/webhook_receiver.py, in this process)
that refuses one event (a dead letter) and is down for a while (retries, a backlog).
Prometheus scrapes every service each second.

    python -m tools.dashboard_plot [--seconds 150] [--output docs/dashboard.png]

Needs Debian's ``prometheus`` and matplotlib (``pip install -e '.[plot]'``), both for
this picture only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from tools.demo import SCENARIO, remove_demo_domains
from lab.pipeline import Pipeline, domain_xml, virsh

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(HERE, "etc", "grafana", "lifecycle-dashboard.json")
URI = "test+unix:///default"
DEMO_HOST = "demo-host"
SIMULATED = {"compute-1": 20.0, "compute-2": 8.0, "compute-3": 4.0}  # events/s each
WEBHOOK = "webhook"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval becomes at a 1 s scrape


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    def __init__(self, workdir: str, jobs: dict[str, list[int]]):
        self.port = free_port()
        self.workdir = workdir
        config = os.path.join(workdir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(_scrape_config(jobs))
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(workdir, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(os.path.join(workdir, "prometheus.log"), "ab"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1s"})
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/api/v1/query_range?{params}", timeout=30) as answer:
            reply = json.load(answer)
        if reply["status"] != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {reply}")
        return reply["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _scrape_config(jobs: dict[str, list[int]]) -> str:
    """Every job's metrics ports on loopback, scraped each second."""
    def targets(ports):
        return ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    head = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
    return head + "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: [{targets(ports)}]\n"
        for job, ports in jobs.items())


class Load:
    """Steps the simulated hosts' domains at their rates, on a thread."""

    def __init__(self, hosts: dict):
        self.hosts = hosts
        self.rates = dict(SIMULATED)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        due = {name: time.monotonic() for name in self.hosts}
        while not self._stop.is_set():
            now = time.monotonic()
            for name, host in self.hosts.items():
                while due[name] <= now:
                    host.step(random.randrange(len(host.domains)))
                    due[name] += 1.0 / self.rates[name]
            self._stop.wait(0.005)


def run(seconds: float, output: str, workdir: str) -> None:
    from benchmarks.hosts import SimulatedHost
    from lab.forwarder import TcpForwarder

    shutil.rmtree(workdir, ignore_errors=True)
    pipeline = Pipeline(workdir, exchange="lifecycle-dashboard", queue="lifecycle-dashboard")
    forwarder = TcpForwarder(("127.0.0.1", 5672))
    forwarder.start()
    simulated, prometheus, load, receiver = {}, None, None, None
    try:
        pipeline.db_sync()
        pipeline.start_consumer()
        receiver = _start_webhook(pipeline)
        pipeline.start_agent(DEMO_HOST, URI)
        ports = {}
        for name in SIMULATED:
            ports[name] = free_port()
            via = forwarder.port if name == "compute-3" else 5672
            simulated[name] = SimulatedHost(
                name, workdir, 20, pipeline.exchange, f"rabbit://guest:guest@127.0.0.1:{via}/",
                {"heartbeat_interval": 1.0, "broker_retry_interval_max": 2.0},
                metrics_port=ports[name])
            simulated[name].start()
        pipeline.wait_for(lambda: all(h.ready() for h in simulated.values()), 60,
                          "the simulated hosts")
        for host in simulated.values():
            host.take_domains()
        agent_ports = [pipeline.ports[f"agent-{DEMO_HOST}.conf"], *ports.values()]
        prometheus = Prometheus(workdir, {
            "lifecycle-agent": agent_ports,
            "lifecycle-consumer": [pipeline.ports["consumer.conf"]],
            "lifecycle-webhook": [pipeline.ports[f"{WEBHOOK}.conf"]]})
        pipeline.wait_for(prometheus.ready, 60, "Prometheus")
        load = Load(simulated)
        start = time.time()
        load.start()
        _timeline(pipeline, load, forwarder, receiver, start, seconds)
        end = time.time()
        time.sleep(2)  # the last scrape
        plot(prometheus, start, end, output)
        print(f"dashboard picture: {output} ({end - start:.0f} s of data)")
    finally:
        if load is not None:
            load.stop()
        for host in simulated.values():
            host.stop()
        pipeline.stop()
        if receiver is not None:
            receiver.stop()
        forwarder.stop()
        if prometheus is not None:
            prometheus.stop()
        remove_demo_domains()
        pipeline.delete_broker_objects()


def _start_webhook(pipeline: Pipeline):
    """A receiver that verifies every request, and lifecycle-webhook toward it (its
    back-off capped at a few seconds, so that the picture shows it come back)."""
    from lab.webhook_receiver import Receiver, write_secret_file
    from lifecycle_webhook import signing
    secret = signing.new_secret()
    secret_path = write_secret_file(os.path.join(pipeline.workdir, "webhook.secret"), secret)
    receiver = Receiver(secret, path="/events").start()
    pipeline.start_webhook(WEBHOOK, receiver.url, secret_path,
                           {"webhook": {"retry_interval_max": 4}})
    return receiver


def _refuse_one(receiver) -> None:
    """The receiver answers 400 to the next event it gets, once: a dead letter."""
    refused = []

    def first_only(received) -> bool:
        if refused:
            return False
        refused.append(received)
        return True
    receiver.refuse(first_only, 400, "unknown tenant")


def _timeline(pipeline: Pipeline, load: Load, forwarder, receiver, start: float,
              seconds: float) -> None:
    """The scenario, at fractions of the run: the demo, a burst, a broker outage for
    one host, unreadable messages and an event the webhook's endpoint refuses, the
    demo's agent killed and started again, the webhook's endpoint down for a while."""
    def at(fraction: float) -> None:
        delay = start + fraction * seconds - time.time()
        if delay > 0:
            time.sleep(delay)

    at(0.08)
    _demo_scenario(pipeline)
    at(0.25)
    load.rates["compute-2"] = 150.0  # a burst: a host evacuated, say
    at(0.35)
    load.rates["compute-2"] = SIMULATED["compute-2"]
    at(0.42)
    forwarder.stop()  # compute-3 loses its broker: its outbox fills
    at(0.55)
    forwarder.start()
    at(0.6)
    _unreadable_messages(pipeline, 7)
    _refuse_one(receiver)
    at(0.68)
    pipeline.stop_process(f"agent-{DEMO_HOST}", signal.SIGKILL)
    at(0.72)
    receiver.go_down(until=time.monotonic() + 0.1 * seconds)
    at(0.85)
    pipeline.start_agent(DEMO_HOST, URI)
    at(1.0)


def _demo_scenario(pipeline: Pipeline) -> None:
    for args, _name, _expected in SCENARIO:
        if args[0] == "define":
            name = args[1][len("{xml:"):-1]
            path = os.path.join(pipeline.workdir, f"{name}.xml")
            with open(path, "w") as f:
                f.write(domain_xml(name))
            args = ["define", path]
        virsh(URI, *args)
        time.sleep(0.3)


def _unreadable_messages(pipeline: Pipeline, count: int) -> None:
    import kombu
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
        producer = conn.Producer()
        for i in range(count):
            producer.publish(b"{not json %d" % i, exchange=pipeline.exchange,
                             routing_key="notifications.info", content_type="application/json")



def plot(prometheus: Prometheus, start: float, end: float, output: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    panels = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    columns = 3
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(18, 4.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        defaults = panel["fieldConfig"]["defaults"]
        unit = defaults.get("unit", "short")
        log_scale = defaults.get("custom", {}).get("scaleDistribution", {}).get("type") == "log"
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            expr = expr.replace("$agent_job", "lifecycle-agent").replace(
                "$consumer_job", "lifecycle-consumer").replace("$webhook_job",
                                                               "lifecycle-webhook")
            for series in prometheus.query_range(expr, start, end):
                times = [datetime.datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
                values = [_scaled(float(v), unit) for _, v in series["values"]]
                ax.plot(times, values, label=_legend(target["legendFormat"], series["metric"]),
                        linewidth=1.4)
        ax.set_title(panel["title"], fontsize=11)
        ax.set_ylabel(_unit_label(unit))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)
        if log_scale:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(f"{dashboard['title']}: the dashboard's queries over "
                    f"{end - start:.0f} s of a demo run, from Prometheus", fontsize=14)
    figure.tight_layout(rect=(0, 0, 1, 0.975))  # room for the title
    figure.savefig(output, dpi=72)


def _legend(template: str, labels: dict) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _scaled(value: float, unit: str) -> float:
    if unit == "s":
        return value * 1000  # milliseconds read better here
    if unit == "bytes":
        return value / 2**20
    return value


def _unit_label(unit: str) -> str:
    return {"s": "ms", "ops": "per second", "bytes": "MiB", "short": ""}.get(unit, unit)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)  # the simulated hosts' agents run in here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--output", default=os.path.join(HERE, "docs", "dashboard.png"))
    parser.add_argument("--workdir", default=os.path.join(HERE, "state", "dashboard"))
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        print("dashboard_plot: needs Prometheus: apt-get install prometheus", file=sys.stderr)
        return 2
    run(args.seconds, args.output, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
