"""The demo: a consumer on SQLite and an agent on libvirtd's shared test hypervisor
(test+unix:///default), driven through virsh, with the instance table shown as it
changes and each event's end-to-end latency. Run by tools/demo."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import socket
import statistics
import sys
import time


from lab.pipeline import Pipeline, domain_xml, virsh
from lifecycle_common import timeutil

URI = "test+unix:///default"
HOST = "demo-host"
DOMAINS = ["demo-web", "demo-db", "demo-cache"]

# (what to run with virsh, the instance it changes, what the database must then show)
SCENARIO = [
    (["define", "{xml:demo-web}"], "demo-web", {"power_state": "shutdown", "deleted": False}),
    (["define", "{xml:demo-db}"], "demo-db", {"power_state": "shutdown", "deleted": False}),
    (["define", "{xml:demo-cache}"], "demo-cache", {"power_state": "shutdown", "deleted": False}),
    (["start", "demo-web"], "demo-web", {"power_state": "running"}),
    (["start", "demo-db"], "demo-db", {"power_state": "running"}),
    (["start", "demo-cache"], "demo-cache", {"power_state": "running"}),
    (["suspend", "demo-web"], "demo-web", {"power_state": "paused"}),
    (["resume", "demo-web"], "demo-web", {"power_state": "running"}),
    (["destroy", "demo-db"], "demo-db", {"power_state": "shutdown"}),
    (["shutdown", "demo-cache"], "demo-cache", {"power_state": "shutdown"}),
    (["start", "demo-db"], "demo-db", {"power_state": "running"}),
    (["undefine", "demo-cache"], "demo-cache", {"deleted": True}),
    (["destroy", "demo-web"], "demo-web", {"power_state": "shutdown"}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=os.path.join(os.getcwd(), "state", "demo"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    pipeline = Pipeline(args.workdir, exchange="lifecycle-demo", queue="lifecycle-demo",
                        consumer_options={"metrics": {"bind_port": _port_or_free(9179)}})
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    try:
        return _run(pipeline)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping")
        return 130
    finally:
        _cleanup(pipeline)


def _interrupt(*_):
    raise KeyboardInterrupt


def _run(pipeline: Pipeline) -> int:
    _purge_queue(pipeline)
    remove_demo_domains()
    print(f"state and logs in {pipeline.workdir}")
    pipeline.db_sync()
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI, groups={"metrics": {"bind_port": _port_or_free(9178)}})
    print(f"consumer and agent ({URI}) started; waiting for the agent's start inventory")
    print(f"metrics and health: {pipeline.metrics_url('agent-' + HOST)} (agent), "
          f"{pipeline.metrics_url('consumer')} (consumer); /healthz beside each")
    pipeline.wait_for_instance("test", timeout=30, direct=True, power_state="running")
    _show(pipeline)
    latencies = []
    for argv, name, expected in SCENARIO:
        argv = [_expand(a, pipeline.workdir) for a in argv]
        started = time.monotonic()
        virsh(URI, *argv)
        row = pipeline.wait_for_instance(name, timeout=15, direct=True, **expected)
        waited = (time.monotonic() - started) * 1000
        latency = _latency_ms(row)
        latencies.append(latency)
        print(f"\n$ virsh {' '.join(argv if argv[0] != 'define' else ['define', name + '.xml'])}"
              f"   -> {name}: {row['power_state']}{' (deleted)' if row['deleted'] else ''}, "
              f"event to database {latency:.1f} ms (virsh to visible {waited:.0f} ms)")
        _show(pipeline)
    print(f"\n{len(latencies)} events, end-to-end latency (libvirt callback -> committed): "
          f"median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms")
    print("\nhosts:")
    print(pipeline.manage("host", "list"))
    for name in (f"agent-{HOST}", "consumer"):
        code, health = pipeline.health(name)
        print(f"\n{pipeline.metrics_url(name)} (health {health['status']}, HTTP {code}), "
              "the counters that moved:")
        for sample, value in pipeline.scrape(name).items():
            if sample.startswith("lifecycle_") and value and "_bucket" not in sample:
                print(f"  {sample} {value:g}")
    return 0


def _port_or_free(port: int) -> int:
    """The service's default metrics port if nothing else holds it, else a free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _expand(arg: str, workdir: str) -> str:
    if arg.startswith("{xml:"):
        name = arg[5:-1]
        path = os.path.join(workdir, f"{name}.xml")
        with open(path, "w") as f:
            f.write(domain_xml(name))
        return path
    return arg


def _latency_ms(row: dict) -> float:
    delta = timeutil.parse(row["applied_at"]) - timeutil.parse(row["event_occurred_at"])
    return delta / datetime.timedelta(milliseconds=1)


def _show(pipeline: Pipeline) -> None:
    from consumer.cli import tables
    from consumer.cli.listing import INSTANCE_COLUMNS
    print(tables.table(pipeline.instances(direct=True), INSTANCE_COLUMNS))


def _purge_queue(pipeline: Pipeline) -> None:
    from consumer import config
    from lifecycle_common import broker
    settings = broker.settings(config.load(["--config-file", pipeline.consumer_conf]))
    conn, _ = broker.Connector(settings).connect()  # as the demo's consumer connects
    try:
        conn.channel().queue_purge(pipeline.queue)
    except Exception:  # noqa: BLE001 - the queue does not exist yet
        pass
    finally:
        broker.release(conn)


def remove_demo_domains() -> None:
    for name in DOMAINS:
        virsh(URI, "destroy", name, check=False)
        virsh(URI, "undefine", name, check=False)


def _cleanup(pipeline: Pipeline) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
    remove_demo_domains()
    pipeline.stop()
    print("demo stopped: agent and consumer exited")


if __name__ == "__main__":
    sys.exit(main())
