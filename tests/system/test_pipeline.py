"""The three console scripts as real processes against libvirtd's shared test
hypervisor; domains changed with virsh; the database read with
``lifecycle-manage instance list --format json``."""

from __future__ import annotations

import datetime
import re
import signal
import subprocess
import time

import pytest

from lab.pipeline import command, domain_xml, virsh

pytestmark = pytest.mark.system

URI = "test+unix:///default"
ISO_UTC_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")
POWER_STATES = {"pending", "running", "paused", "shutdown", "crashed", "suspended"}


def define(pipeline, name: str) -> str:
    path = f"{pipeline.workdir}/{name}.xml"
    with open(path, "w") as f:
        f.write(domain_xml(name))
    virsh(URI, "define", path)
    return name


@pytest.fixture
def domains(pipeline):
    names = [f"sys-{pipeline.tag}-{i}" for i in range(3)]
    yield names
    for name in names:
        virsh(URI, "destroy", name, check=False)
        virsh(URI, "undefine", name, check=False)


def row_of(pipeline, name):
    rows = [r for r in pipeline.instances() if r["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def test_domain_lifecycle_reaches_the_database(pipeline, domains):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI)
    web, db, cache = domains
    for name in domains:
        define(pipeline, name)
    steps = [
        (["start", web], web, {"power_state": "running"}),
        (["start", db], db, {"power_state": "running"}),
        (["start", cache], cache, {"power_state": "running"}),
        (["suspend", web], web, {"power_state": "paused"}),
        (["resume", web], web, {"power_state": "running"}),
        (["destroy", db], db, {"power_state": "shutdown"}),
        (["shutdown", cache], cache, {"power_state": "shutdown"}),
        (["undefine", cache], cache, {"deleted": True}),
    ]
    for argv, name, expected in steps:
        virsh(URI, *argv)
        pipeline.wait_for_instance(name, **expected)

    rows = {r["name"]: r for r in pipeline.instances()}
    assert rows[web]["power_state"] == "running" and not rows[web]["deleted"]
    assert rows[db]["power_state"] == "shutdown" and not rows[db]["deleted"]
    assert rows[cache]["deleted"] is True
    assert rows["test"]["power_state"] == "running"  # from the agent's start inventory
    for row in rows.values():
        assert row["host"] == "sys-host"
        assert row["power_state"] in POWER_STATES
        assert ISO_UTC_MICRO.match(row["event_occurred_at"]), row
        assert ISO_UTC_MICRO.match(row["applied_at"]), row
        if not row["deleted"]:
            assert row["uuid"] == virsh(URI, "domuuid", row["name"]).stdout.strip()

    [host] = pipeline.hosts()
    assert host["name"] == "sys-host" and host["status"] == "up"
    assert host["last_seq"] >= len(steps) + len(domains)
    assert ISO_UTC_MICRO.match(host["last_heartbeat_at"])


def test_events_survive_a_consumer_outage(pipeline, domains):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI)
    name = define(pipeline, domains[0])
    pipeline.wait_for_instance(name, power_state="shutdown")

    assert pipeline.stop_process("consumer") == 0
    virsh(URI, "start", name)
    virsh(URI, "suspend", name)
    pipeline.start_consumer()
    row = pipeline.wait_for_instance(name, power_state="paused")
    assert row["last_event_type"] == "instance.paused"


def test_agent_restart_reconciles_what_happened_meanwhile(pipeline, domains, figure):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI)
    kept, removed = define(pipeline, domains[0]), define(pipeline, domains[1])
    virsh(URI, "start", kept)
    pipeline.wait_for_instance(kept, power_state="running")
    pipeline.wait_for_instance(removed, power_state="shutdown")
    epoch = pipeline.hosts()[0]["epoch"]

    stopping = time.monotonic()
    pipeline.signal_process("agent-sys-host", signal.SIGTERM)
    # A clean stop says so: the host is down at once, not after host_down_after.
    pipeline.wait_for(lambda: pipeline.hosts(direct=True)[0]["status"] == "down", 10, "host down")
    figure("clean agent stop: SIGTERM -> host down in the database",
           (time.monotonic() - stopping) * 1000)
    assert pipeline.stop_process("agent-sys-host", sig=None) == 0
    assert pipeline.hosts()[0]["status"] == "down"

    virsh(URI, "suspend", kept)       # nobody listens: only the next inventory can tell
    virsh(URI, "undefine", removed)
    starting = time.monotonic()
    pipeline.start_agent("sys-host", URI, wait=False)
    pipeline.wait_for_instance(kept, power_state="paused", direct=True)
    pipeline.wait_for_instance(removed, deleted=True, direct=True)
    figure("agent restart: process start -> changes made while it was down reconciled",
           (time.monotonic() - starting) * 1000)
    pipeline.wait_for_instance(kept, power_state="paused")  # and as lifecycle-manage shows it
    host = pipeline.wait_for(lambda: [h for h in pipeline.hosts() if h["status"] == "up"],
                             10, "host up again")[0]
    assert host["epoch"] > epoch


def test_silent_host_is_marked_down(pipeline, figure):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI)
    pipeline.wait_for(lambda: [h for h in pipeline.hosts() if h["status"] == "up"], 15, "host up")
    # No farewell heartbeat: the consumer must notice the silence.
    assert pipeline.stop_process("agent-sys-host", signal.SIGKILL) == -signal.SIGKILL
    started = datetime.datetime.now(datetime.timezone.utc)
    pipeline.wait_for(lambda: pipeline.hosts(direct=True)[0]["status"] == "down", 15,
                      "host marked down")
    silent = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    figure(f"kill -9 of the agent: host down after (host_down_after = "
           f"{pipeline.host_down_after:.0f} s)", silent * 1000)
    assert silent >= 1.0
    # Heartbeats returning bring it back up.
    pipeline.start_agent("sys-host", URI, wait=False)
    pipeline.wait_for(lambda: pipeline.hosts()[0]["status"] == "up", 15, "host up again")


def test_bad_option_stops_the_service_with_a_message_naming_it(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[agent]\nheartbeat_interval = often\n")
    done = subprocess.run([command("lifecycle-agent"), "--config-file", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "heartbeat_interval" in done.stderr

    conf.write_text("[consumer]\nqueue_type = fancy\n")
    done = subprocess.run([command("lifecycle-consumer"), "--config-file", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "queue_type" in done.stderr
