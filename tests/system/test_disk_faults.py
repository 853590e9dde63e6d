"""The agent's disk, faulted for real: a small tmpfs mounted as its state_path and filled
to the last byte by a file, and an outbox.sqlite that is not a database. The real
``lifecycle-agent`` and ``lifecycle-consumer`` processes, libvirtd's shared test
hypervisor, the database read with ``lifecycle-manage``."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lab.pipeline import domain_xml, virsh
from tests.support import tmpfs

pytestmark = pytest.mark.system

URI = "test+unix:///default"
HOST = "disk-host"
AGENT = f"agent-{HOST}"
UNWRITTEN = "lifecycle_agent_events_unwritten_total"


@pytest.fixture
def state_tmpfs(pipeline):
    """A 2 MiB tmpfs mounted where the agent keeps its state; unmounted at the end, once
    the agent that holds it has stopped, also when the test failed."""
    path = os.path.join(pipeline.workdir, AGENT)
    with tmpfs.small_tmpfs(path, size="2m"):
        try:
            yield path
        finally:
            if pipeline.running(AGENT):
                pipeline.stop_process(AGENT)


@pytest.fixture
def domain(pipeline, libvirtd):
    """A running domain of the test's own on the shared test hypervisor."""
    name = f"disk-{pipeline.tag}"
    dom = libvirtd.defineXML(domain_xml(name))
    dom.create()
    yield dom
    virsh(URI, "destroy", name, check=False)
    virsh(URI, "undefine", name, check=False)


def power_state_in_libvirt(name: str) -> str:
    return virsh(URI, "domstate", name).stdout.strip()  # running, paused


def power_state_in_database(pipeline, name: str, direct: bool = False) -> str:
    [row] = [r for r in pipeline.instances(direct) if r["name"] == name]
    return row["power_state"]


def handled(metrics: dict) -> float:
    """Lifecycle events the agent's writer wrote or could not write."""
    written = sum(v for k, v in metrics.items()
                  if k.startswith("lifecycle_agent_events_total{"))
    return written + metrics.get(UNWRITTEN, 0)


def test_a_full_disk_degrades_the_agent_which_recovers_by_itself(
        pipeline, state_tmpfs, domain, figure):
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI)
    name = domain.name()
    pipeline.wait_for_instance(name, power_state="running", direct=True)

    filler = tmpfs.fill(state_tmpfs)
    filled = time.monotonic()
    # A burst of events between two checkpoints: the outbox's rows need new pages and
    # the WAL room it has not got. (A trickle may fit in the pages SQLite already has.)
    state = "running"
    for burst in range(5):
        seen = handled(pipeline.scrape(AGENT))
        for _ in range(100):
            domain.suspend() if state == "running" else domain.resume()
            state = "paused" if state == "running" else "running"
        pipeline.wait_for(lambda: handled(pipeline.scrape(AGENT)) == seen + 100, 20,
                          "the burst handled by the agent's writer")
        if pipeline.scrape(AGENT)[UNWRITTEN] > 0:
            break
    metrics = pipeline.scrape(AGENT)
    assert metrics[UNWRITTEN] > 0, "the full disk took every event"
    assert metrics["lifecycle_agent_outbox_writable"] == 0

    # What was written reaches the database; what was not leaves it behind libvirt.
    def caught_up():
        agent, consumer = pipeline.scrape(AGENT), pipeline.scrape("consumer")
        return all(
            agent.get(f'lifecycle_agent_events_total{{transition="{t}"}}', 0) == consumer.get(
                f'lifecycle_consumer_events_applied_total{{event_type="instance.{t}"}}', 0)
            for t in ("paused", "resumed"))
    pipeline.wait_for(caught_up, 20, "every event written to be applied")
    if power_state_in_database(pipeline, name, direct=True) == power_state_in_libvirt(name):
        lost = pipeline.scrape(AGENT)[UNWRITTEN]
        domain.suspend() if state == "running" else domain.resume()
        pipeline.wait_for(lambda: pipeline.scrape(AGENT)[UNWRITTEN] == lost + 1, 10,
                          "one more event lost")
    stale = power_state_in_database(pipeline, name)
    assert stale != power_state_in_libvirt(name)

    # The agent stays up, degraded (not failing), and its heartbeats go on.
    code, body = pipeline.health(AGENT)
    assert (code, body["status"]) == (200, "degraded"), body
    disk = body["checks"]["disk"]
    assert disk["status"] == "degraded"
    assert f"outbox at {state_tmpfs}/outbox.sqlite cannot be written since" in disk["detail"]
    assert "database or disk is full" in disk["detail"] and "events not written" in disk["detail"]
    beat = pipeline.hosts(direct=True)[0]["last_heartbeat_at"]
    pipeline.wait_for(lambda: pipeline.hosts(direct=True)[0]["last_heartbeat_at"] > beat, 10,
                      "a heartbeat while the disk is full")
    assert pipeline.running(AGENT)
    log = pipeline.log(AGENT)
    assert "cannot be written, the disk is full: database or disk is full" in log
    assert f"instance {domain.UUIDString()}: " in log and "not written to the outbox" in log

    os.remove(filler)
    freed = time.monotonic()
    pipeline.wait_for(lambda: pipeline.health(AGENT)[1]["status"] == "ok", 30,
                      "the agent's health ok again")
    pipeline.wait_for(lambda: power_state_in_database(pipeline, name, direct=True)
                      == power_state_in_libvirt(name), 30,
                      "the inventory to bring the database in line with libvirt")
    figure("full disk freed -> database in line with libvirt", (time.monotonic() - freed) * 1000)
    assert power_state_in_database(pipeline, name) == power_state_in_libvirt(name) != stale
    log = pipeline.log(AGENT)
    assert "can be written again after" in log and "events were not written meanwhile" in log
    assert "reconnect inventory of" in log
    assert pipeline.scrape(AGENT)["lifecycle_agent_outbox_writable"] == 1
    assert pipeline.running(AGENT)
    # Every event the outbox took, before or during the outage, reached the database.
    pipeline.wait_for(caught_up, 20, "every event written to be applied")
    print(f"\nfull for {freed - filled:.1f}s: "
          f"{pipeline.scrape(AGENT)[UNWRITTEN]:.0f} events not written")


def test_an_agent_started_on_a_full_disk_waits_for_it_and_stops_on_sigterm(
        pipeline, state_tmpfs, figure):
    pipeline.start_consumer()
    filler = tmpfs.fill(state_tmpfs)
    waiting = "the agent cannot start: the outbox at"
    pipeline.start_agent(HOST, URI, wait=False)
    pipeline.wait_for(lambda: waiting in pipeline.log(AGENT), 30, "the agent saying it waits")
    assert "the disk is full: database or disk is full" in pipeline.log(AGENT)
    assert pipeline.running(AGENT)
    stopping = time.monotonic()
    assert pipeline.stop_process(AGENT, signal.SIGTERM, timeout=10) == 0
    figure("agent waiting for its disk: SIGTERM -> exit", (time.monotonic() - stopping) * 1000)
    assert "asked to stop while waiting for the outbox's disk" in pipeline.log(AGENT)

    pipeline.start_agent(HOST, URI, wait=False)
    pipeline.wait_for(lambda: pipeline.log(AGENT).count(waiting) == 2, 30, "waiting again")
    os.remove(filler)
    pipeline.wait_for(lambda: pipeline.hosts(direct=True), 30, "the start inventory")
    pipeline.wait_for_instance("test", power_state="running", timeout=30)
    assert "can be written again after" in pipeline.log(AGENT)


def test_a_corrupt_outbox_is_moved_aside_and_the_agent_starts_a_new_state(pipeline):
    state = os.path.join(pipeline.workdir, AGENT)
    os.makedirs(state)
    garbage = b"not an outbox: a disk that lied\n" * 1000
    with open(os.path.join(state, "outbox.sqlite"), "wb") as f:
        f.write(garbage)
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI)  # returns once its start inventory is in the database
    pipeline.wait_for_instance("test", power_state="running")
    [aside] = [f for f in os.listdir(state) if f.startswith("outbox.sqlite.corrupt-")
               and not f.endswith(("-wal", "-shm"))]
    with open(os.path.join(state, aside), "rb") as f:
        assert f.read() == garbage
    log = pipeline.log(AGENT)
    assert "CRITICAL" in log
    assert f"is corrupt (file is not a database): moved aside to {state}/{aside}" in log
    assert "a new state starts" in log
    assert f"host {HOST}: a new state in {state}" in log
    assert pipeline.running(AGENT)
