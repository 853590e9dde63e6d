"""The operator's commands against the running pipeline: ``events tail`` sees a virsh
suspend within a second and ends cleanly on SIGINT; a dead letter is replayed once its
cause is fixed and the restarted consumer applies it."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from lab.pipeline import command, domain_xml, virsh
from tests.support.streams import Lines

pytestmark = pytest.mark.system

URI = "test+unix:///default"


@pytest.fixture
def domain(pipeline):
    name = f"op-{pipeline.tag}"
    path = f"{pipeline.workdir}/{name}.xml"
    with open(path, "w") as f:
        f.write(domain_xml(name))
    yield name, path
    virsh(URI, "destroy", name, check=False)
    virsh(URI, "undefine", name, check=False)


def test_tail_sees_a_virsh_suspend_within_a_second_and_ends_on_sigint(pipeline, domain, figure):
    name, path = domain
    pipeline.start_consumer()
    pipeline.start_agent("op-host", URI)
    virsh(URI, "define", path)
    virsh(URI, "start", name)
    pipeline.wait_for_instance(name, power_state="running", direct=True)

    tail = subprocess.Popen([command("lifecycle-manage"), "--config-file", pipeline.consumer_conf,
                             "events", "tail", "--format", "json", "--type", "instance.*"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = Lines(tail.stdout), Lines(tail.stderr)
        err.until(lambda line: "watching exchange" in line, timeout=15)
        started = time.monotonic()
        virsh(URI, "suspend", name)
        line = out.until(lambda line: json.loads(line)["name"] == name, timeout=5)
        elapsed = time.monotonic() - started
        figure("events tail: virsh suspend -> the JSON line read", elapsed * 1000)
        event = json.loads(line)
        assert (event["event_type"], event["host"], event["power_state"]) == (
            "instance.paused", "op-host", "paused")
        assert event["uuid"] == virsh(URI, "domuuid", name).stdout.strip()
        for key in ("occurred_at", "seen_at"):
            assert event[key].endswith("+00:00") and len(event[key]) == 32
        assert elapsed < 1.0, f"{elapsed:.3f}s"
        assert not [l for l in out.seen if json.loads(l)["event_type"] == "host.heartbeat"]

        tail.send_signal(signal.SIGINT)
        assert tail.wait(10) == 0
        assert "Traceback" not in "".join(err.seen) + tail.stderr.read()
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert pipeline.manage("queue", "status", "--format", "json")  # the consumer's queue


def dead_letters(pipeline) -> list[dict]:
    return json.loads(pipeline.manage("dlq", "list", "--format", "json", "--limit", "10000"))


def test_a_dead_letter_is_replayed_once_its_cause_is_fixed(pipeline, domain):
    """The consumer takes host_user identity without trusting the agent's user (guest),
    so everything the agent says is dead-lettered; restarted trusting guest, the replay
    of the dead letters is applied and the dead-letter queue is empty."""
    name, path = domain
    strict = pipeline.write_consumer_conf("strict.conf", {"consumer": {
        "publisher_identity": "host_user"}})
    pipeline.start_consumer(conf=strict)
    pipeline.start_agent("op-host", URI, wait=False)
    pipeline.wait_for(lambda: [d for d in dead_letters(pipeline)
                               if d["event_type"] == "host.inventory"], 20,
                      "the agent's start inventory dead-lettered")
    virsh(URI, "define", path)
    virsh(URI, "start", name)
    pipeline.wait_for(lambda: [d for d in dead_letters(pipeline)
                               if d["event_type"] == "instance.started"], 20,
                      "the start dead-lettered")
    assert pipeline.stop_process("agent-op-host") == 0
    assert pipeline.stop_process("consumer") == 0
    letters = dead_letters(pipeline)
    assert {d["cause"] for d in letters} == {"publisher"}
    assert {d["original_user_id"] for d in letters} == {"guest"}
    assert not [r for r in pipeline.instances() if r["name"] == name]

    fixed = pipeline.write_consumer_conf("fixed.conf", {"consumer": {
        "publisher_identity": "host_user", "trusted_publishers": "guest"}})
    pipeline.start_consumer(conf=fixed)
    out = pipeline.manage("dlq", "replay", "--all", "--yes")
    assert f"replayed {len(letters)} dead letter" in out
    pipeline.wait_for_instance(name, power_state="running")
    pipeline.wait_for(lambda: dead_letters(pipeline) == [], 10, "the dead-letter queue empty")
    events = json.loads(pipeline.manage("events", "list", "--host", "op-host", "--format", "json"))
    assert "instance.started" in {e["event_type"] for e in events}
