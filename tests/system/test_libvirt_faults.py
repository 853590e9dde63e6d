"""libvirtd restarted under a running agent, and reconciliation by periodic inventory."""

from __future__ import annotations

import subprocess
import time

import pytest

from consumer.db import engine as db_engine
from consumer.db.tables import instances
from lab.pipeline import domain_xml, virsh
from tests.support import libvirtd as libvirtd_control

pytestmark = pytest.mark.system

URI = "test+unix:///default"


def host_row(pipeline):
    return pipeline.hosts()[0]


def test_agent_recovers_when_libvirtd_restarts(pipeline, libvirtd, figure):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI)
    name = f"sys-{pipeline.tag}-gone"
    path = f"{pipeline.workdir}/{name}.xml"
    with open(path, "w") as f:
        f.write(domain_xml(name))
    virsh(URI, "define", path)
    pipeline.wait_for_instance(name, power_state="shutdown")

    # The test hypervisor lives in libvirtd: a restart forgets the domain defined above,
    # and only the agent's reconnection inventory can tell the database.
    libvirtd_control.restart()
    back = time.monotonic()
    pipeline.wait_for(lambda: subprocess.run(["virsh", "-c", URI, "version"],
                                             capture_output=True).returncode == 0,
                      30, "libvirtd to answer again")
    pipeline.wait_for_instance(name, timeout=60, deleted=True)
    figure("libvirtd restart: libvirtd back -> database reconciled", (time.monotonic() - back) * 1000)
    host = pipeline.wait_for(lambda: [h for h in pipeline.hosts() if h["libvirt_connected"]],
                             30, "heartbeat saying libvirt is connected")[0]
    assert host["status"] == "up"
    log = pipeline.log("agent-sys-host")
    assert "lost" in log and "reconnect inventory" in log

    # Events flow again on the new connection (every callback was registered anew).
    virsh(URI, "suspend", "test")
    try:
        pipeline.wait_for_instance("test", power_state="paused")
    finally:
        virsh(URI, "resume", "test")


def test_heartbeat_says_when_libvirt_is_unreachable(pipeline, libvirtd):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI)
    libvirtd_control.stop()
    try:
        host = pipeline.wait_for(
            lambda: [h for h in pipeline.hosts() if not h["libvirt_connected"]],
            30, "a heartbeat saying libvirt is disconnected")[0]
        assert host["status"] == "up"  # the agent itself is alive and says so
    finally:
        libvirtd_control.restart()
    pipeline.wait_for(lambda: [h for h in pipeline.hosts() if h["libvirt_connected"]],
                      60, "the agent to reconnect")


def test_periodic_inventory_corrects_a_wrong_database(pipeline, figure):
    pipeline.start_consumer()
    pipeline.start_agent("sys-host", URI, inventory_interval=1)
    pipeline.wait_for_instance("test", power_state="running")
    engine = db_engine.create(pipeline.database)
    with engine.begin() as conn:  # the database drifts behind the agent's back
        conn.execute(instances.update().where(instances.c.name == "test")
                     .values(power_state="crashed", seq=0))
    started = time.monotonic()
    pipeline.wait_for_instance("test", power_state="running")
    figure("periodic inventory (1 s interval): drift corrected after",
           (time.monotonic() - started) * 1000)
