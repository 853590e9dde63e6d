"""The demo: a consumer on SQLite and an agent on libvirtd's shared test hypervisor
(test+unix:///default), driven through virsh, with the instance table shown as it
changes and each event's end-to-end latency. Then, where libvirtd's QEMU driver answers
(qemu:///system with /usr/bin/qemu-system-x86_64), a fault on a real guest: a second
agent watches it while its ib700 watchdog fires, and the database says why the guest
is paused. Where QEMU is not available that part is skipped, saying why, and the demo
still succeeds. Beside the consumer, a webhook service delivers every instance event,
as a signed CloudEvent, to a small receiver that verifies each signature and prints
what it got. Run by tools/demo."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time


from lab import guests
from lab.pipeline import Pipeline, domain_xml, virsh
from lab.waiting import wait_for
from lifecycle_common import timeutil

URI = "test+unix:///default"
HOST = "demo-host"
DOMAINS = ["demo-web", "demo-db", "demo-cache"]
QEMU_URI = "qemu:///system"
QEMU_HOST = "demo-qemu-host"
WATCHDOG_GUEST = "demo-watchdog"
WEBHOOK = "webhook"
RECEIVER = "receiver"

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
    _start_webhook(pipeline)
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
    _watchdog_fault(pipeline)
    _show_webhook(pipeline)
    print("\nhosts:")
    print(pipeline.manage("host", "list"))
    for name in (f"agent-{HOST}", f"agent-{QEMU_HOST}", "consumer", WEBHOOK):
        if not pipeline.running(name):
            continue  # no QEMU here: no second agent
        code, health = pipeline.health(name)
        print(f"\n{pipeline.metrics_url(name)} (health {health['status']}, HTTP {code}), "
              "the counters that moved:")
        for sample, value in pipeline.scrape(name).items():
            if sample.startswith("lifecycle_") and value and "_bucket" not in sample:
                print(f"  {sample} {value:g}")
    return 0


def _start_webhook(pipeline: Pipeline) -> None:
    """A receiver (lab/webhook_receiver.py: it verifies each request with the
    standardwebhooks and cloudevents packages and prints it) and lifecycle-webhook
    toward it, with a secret of the demo's own."""
    from lab.webhook_receiver import write_secret_file
    from lifecycle_webhook import signing
    secret_path = write_secret_file(os.path.join(pipeline.workdir, "webhook.secret"),
                                    signing.new_secret())
    port = _port_or_free(9190)
    pipeline.start_process(RECEIVER, [sys.executable, "-m", "lab.webhook_receiver",
                                      "--port", str(port), "--secret-file", secret_path])
    url = f"http://127.0.0.1:{port}/events"
    pipeline.start_webhook(WEBHOOK, url, secret_path,
                           {"metrics": {"bind_port": _port_or_free(9180)}})
    print(f"webhook service started: every instance event to {url} as a signed CloudEvent "
          f"(secret in {secret_path}; the receiver's lines in {RECEIVER}.log)")


def _show_webhook(pipeline: Pipeline) -> None:
    """What the receiver got: one line per CloudEvent, its signature checked."""
    events = [e for e in json.loads(pipeline.manage("events", "list", "--format", "json",
                                                     "--limit", "1000"))
              if e["event_type"].startswith("instance.")]
    wait_for(lambda: pipeline.scrape(WEBHOOK).get("lifecycle_webhook_events_delivered_total",
                                                  0) >= len(events),
             15, f"the webhook to deliver {len(events)} events")
    lines = [line for line in pipeline.log(RECEIVER).splitlines() if " sig " in line]
    print(f"\nthe webhook receiver got {len(lines)} CloudEvents (each signature verified "
          "with the standardwebhooks package, each event parsed by the cloudevents SDK):")
    for line in lines:
        print(f"  {line}")


def qemu_unavailable() -> str | None:
    """Why the real-guest part cannot run here, or None when it can."""
    if not os.path.exists(guests.EMULATOR):
        return f"{guests.EMULATOR} is not installed"
    done = virsh(QEMU_URI, "version", check=False)
    if done.returncode != 0:
        return f"libvirtd's QEMU driver does not answer ({done.stderr.strip()})"
    return None


def _watchdog_fault(pipeline: Pipeline) -> None:
    """A real QEMU guest (32 MiB, no OS) whose ib700 watchdog fires: libvirt reports the
    watchdog and pauses the guest; the database shows the instance paused with reason
    ``watchdog`` and the watchdog as its last fault."""
    print(f"\na fault on a real guest ({QEMU_URI}): an ib700 watchdog that fires")
    why_not = qemu_unavailable()
    if why_not:
        print(f"  skipped: {why_not}. tools/bootstrap.sh installs QEMU and starts libvirtd; "
              "the system tests (tests/system/test_fault_guests.py) provoke every fault.")
        return
    pipeline.start_agent(QEMU_HOST, QEMU_URI)
    print(f"  agent {QEMU_HOST} started on {QEMU_URI}")
    path = os.path.join(pipeline.workdir, f"{WATCHDOG_GUEST}.xml")
    with open(path, "w") as f:
        f.write(guests.watchdog_guest_xml(WATCHDOG_GUEST, action="pause"))
    virsh(QEMU_URI, "define", path)
    virsh(QEMU_URI, "start", WATCHDOG_GUEST)
    pipeline.wait_for_instance(WATCHDOG_GUEST, timeout=30, direct=True, power_state="running")
    print(f"\n$ virsh start {WATCHDOG_GUEST}   (a guest with <watchdog model='ib700' "
          "action='pause'/>)")
    started = time.monotonic()
    guests.arm_watchdog(QEMU_URI, WATCHDOG_GUEST)
    print(f"$ virsh qemu-monitor-command --hmp {WATCHDOG_GUEST} "
          f"'o /b {guests.WATCHDOG_PORT:#x} {guests.WATCHDOG_SHORTEST}'   "
          "(arms it with its shortest timeout: it fires at once)")
    row = pipeline.wait_for(lambda: _watchdog_row(pipeline), 15,
                            f"{WATCHDOG_GUEST} paused by its watchdog in the database")
    waited = (time.monotonic() - started) * 1000
    fault = json.loads(pipeline.manage("events", "list", "--instance", row["uuid"], "--type",
                                       "instance.watchdog", "--format", "json"))[0]
    print(f"   -> {WATCHDOG_GUEST}: {row['power_state']} ({row['state_reason']}), last fault "
          f"{row['last_fault']['event_type']} action {row['last_fault']['action']}; "
          f"watchdog event to database {_latency_ms(fault):.1f} ms "
          f"(monitor command to visible {waited:.0f} ms)")
    _show(pipeline)
    print(f"\n$ lifecycle-manage events list --instance {row['uuid']}")
    print(pipeline.manage("events", "list", "--instance", row["uuid"]))


def _watchdog_row(pipeline: Pipeline) -> dict | None:
    for row in pipeline.instances(direct=True):
        if (row["name"] == WATCHDOG_GUEST and row["host"] == QEMU_HOST
                and (row["power_state"], row["state_reason"]) == ("paused", "watchdog")
                and (row["last_fault"] or {}).get("event_type") == "instance.watchdog"):
            return row
    return None


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
    """From libvirt's callback to the commit: of an instance row (its last event) or
    of a journal row (``events list``)."""
    occurred = row["event_occurred_at"] if "event_occurred_at" in row else row["occurred_at"]
    delta = timeutil.parse(row["applied_at"]) - timeutil.parse(occurred)
    return delta / datetime.timedelta(milliseconds=1)


def _show(pipeline: Pipeline) -> None:
    """The instance table as ``lifecycle-manage instance list`` prints it."""
    from consumer.cli import fault_views, tables
    from consumer.cli.listing import INSTANCE_COLUMNS
    rows = [{**r, "last_fault": fault_views.last_fault_cell(r["last_fault"])}
            for r in pipeline.instances(direct=True)]
    print(tables.table(rows, INSTANCE_COLUMNS, right=["reboots"]))


def _purge_queue(pipeline: Pipeline) -> None:
    from consumer import config
    from lifecycle_common import broker
    settings = broker.settings(config.load(["--config-file", pipeline.consumer_conf]))
    conn, _ = broker.Connector(settings).connect()  # as the demo's consumer connects
    try:
        try:
            conn.channel().queue_purge(pipeline.queue)
        except Exception:  # noqa: BLE001 - the queue does not exist yet
            pass
        # The webhook's queue of an earlier demo goes (what it held was that demo's; and
        # one declared by an earlier version may have other arguments).
        conn.channel().queue_delete(pipeline.webhook_queue(WEBHOOK))
    finally:
        broker.release(conn)


def remove_demo_domains() -> None:
    for name in DOMAINS:
        virsh(URI, "destroy", name, check=False)
        virsh(URI, "undefine", name, check=False)
    if qemu_unavailable() is None:
        guests.remove_guest(QEMU_URI, WATCHDOG_GUEST)


def _cleanup(pipeline: Pipeline) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the clean-up
    remove_demo_domains()
    pipeline.stop()
    print("demo stopped: agent and consumer exited")


if __name__ == "__main__":
    sys.exit(main())
