"""What an operator sees of the running services: /metrics scraped over HTTP during a
run, /healthz and systemd's watchdog following libvirtd and the broker, oslo.log's
options, and a metrics port that cannot be had."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from tests.support import libvirtd as libvirtd_control
from tools.pipeline import command, virsh

pytestmark = pytest.mark.system

URI = "test+unix:///default"
HOST = "obs-host"


def test_both_services_export_what_happened_during_a_run(pipeline):
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI)
    virsh(URI, "suspend", "test")
    virsh(URI, "resume", "test")
    consumer = pipeline.wait_for(
        lambda: (m := pipeline.scrape("consumer")).get(
            'lifecycle_consumer_events_applied_total{event_type="instance.resumed"}') and m,
        15, "the consumer to count the resume it applied")
    assert consumer['lifecycle_consumer_events_applied_total{event_type="instance.paused"}'] == 1
    assert consumer['lifecycle_consumer_events_applied_total{event_type="host.inventory"}'] >= 1
    assert consumer["lifecycle_consumer_event_latency_seconds_count"] >= 3  # and the inventory
    assert 0 < consumer["lifecycle_consumer_event_latency_seconds_sum"] < 10
    assert consumer["lifecycle_consumer_batch_messages_count"] >= 1
    assert consumer['lifecycle_consumer_dead_letters_total{reason="unreadable"}'] == 0
    publish_garbage(pipeline.exchange)
    pipeline.wait_for(lambda: pipeline.scrape("consumer").get(
        'lifecycle_consumer_dead_letters_total{reason="unreadable"}') == 1, 10,
        "the unreadable message counted as a dead letter")
    assert consumer["lifecycle_consumer_broker_connected"] == 1
    assert consumer["lifecycle_consumer_database_up"] == 1
    assert consumer['lifecycle_consumer_health_status{status="ok"}'] == 1
    pipeline.wait_for(lambda: pipeline.scrape("consumer").get(
        'lifecycle_consumer_hosts{status="up"}') == 1, 10, "the host counted up")

    agent = pipeline.wait_for(
        lambda: (m := pipeline.scrape(f"agent-{HOST}"))["lifecycle_agent_outbox_rows"] == 0 and m,
        10, "the agent's outbox to empty")
    assert agent['lifecycle_agent_events_total{transition="paused"}'] == 1
    assert agent['lifecycle_agent_events_total{transition="resumed"}'] == 1
    assert agent["lifecycle_agent_inventories_total"] >= 1
    assert agent["lifecycle_agent_confirms_total"] >= 3
    assert agent["lifecycle_agent_outbox_oldest_age_seconds"] == 0
    assert agent["lifecycle_agent_nacks_total"] == agent["lifecycle_agent_returns_total"] == 0
    assert agent["lifecycle_agent_broker_connected"] == agent["lifecycle_agent_libvirt_connected"] == 1
    assert agent['lifecycle_agent_thread_alive{thread="publisher"}'] == 1
    assert agent[f'lifecycle_agent_info{{epoch="{pipeline.hosts()[0]["epoch"]}",host="{HOST}"}}'] == 1
    assert agent["process_resident_memory_bytes"] > 0
    no_instance_labels = [k for k in {**agent, **consumer} if "uuid" in k or "test" in k]
    assert not no_instance_labels

    for name in ("consumer", f"agent-{HOST}"):
        code, body = pipeline.health(name)
        assert (code, body["status"]) == (200, "ok"), body


def publish_garbage(exchange: str) -> None:
    import kombu
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=5) as conn:
        conn.Producer().publish(b"{not json", exchange=exchange, routing_key="notifications.info")


class NotifySocket:
    """Where a service under test sends systemd's notifications."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def env(self, watchdog_seconds: float) -> dict:
        return {"NOTIFY_SOCKET": self.path, "WATCHDOG_USEC": str(int(watchdog_seconds * 1e6))}

    def next(self, timeout: float) -> dict[str, str] | None:
        """The next notification's fields, or None if none comes within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        return dict(line.split("=", 1) for line in data.splitlines())

    def wait_for(self, key: str, value_start: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            fields = self.next(remaining)
            if fields and fields.get(key, "").startswith(value_start):
                return fields
        raise AssertionError(f"no {key}={value_start}... notified within {timeout}s")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def test_agent_health_and_watchdog_follow_libvirtd(pipeline, notify_socket, figure):
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI, groups={"health": {"libvirt_failing_after": 3}},
                         env=notify_socket.env(watchdog_seconds=1.0))
    notify_socket.wait_for("READY", "1", 10)
    notify_socket.wait_for("WATCHDOG", "1", 5)
    name = f"agent-{HOST}"
    assert pipeline.health(name)[0] == 200

    try:
        stopped = time.monotonic()  # libvirtd closes its connections as it begins to stop
        libvirtd_control.stop()
        degraded = pipeline.wait_for(lambda: (h := pipeline.health(name))[1]["status"] == "degraded"
                                     and h, 10, "health degraded")
        at_degraded = time.monotonic() - stopped
        assert degraded[0] == 200
        assert degraded[1]["checks"]["libvirt"]["status"] == "degraded"
        failing = pipeline.wait_for(lambda: (h := pipeline.health(name))[0] == 503 and h, 15,
                                    "health failing")
        at_failing = time.monotonic() - stopped
        assert failing[1]["status"] == "failing"
        assert failing[1]["checks"]["libvirt"]["status"] == "failing"
        assert failing[1]["checks"]["broker"]["status"] == "ok"
        # The watchdog goes unfed while failing: systemd would restart the agent.
        notify_socket.wait_for("STATUS", "failing", 5)
        quiet_until = time.monotonic() + 2.5  # more than two watchdog periods
        while (remaining := quiet_until - time.monotonic()) > 0:
            fields = notify_socket.next(remaining)
            assert fields is None or "WATCHDOG" not in fields, fields
    finally:
        libvirtd_control.start()
    back = time.monotonic()
    pipeline.wait_for(lambda: pipeline.health(name)[1]["status"] == "ok", 60, "health ok again")
    assert pipeline.health(name)[0] == 200
    at_ok = time.monotonic() - back
    notify_socket.wait_for("WATCHDOG", "1", 5)
    figure("health: libvirtd stopped -> degraded", at_degraded * 1000)
    figure("health: libvirtd stopped -> failing (threshold 3 s)", at_failing * 1000)
    figure("health: libvirtd back -> ok", at_ok * 1000)
    scraped = pipeline.scrape(name)
    assert scraped["lifecycle_agent_libvirt_reconnects_total"] >= 1


def test_consumer_is_failing_without_its_broker_and_not_ready(pipeline, notify_socket):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    conf = pipeline.write_consumer_conf("consumer-nobroker.conf", {
        "DEFAULT": {"transport_url": f"rabbit://guest:guest@127.0.0.1:{port}/"},
        "health": {"broker_failing_after": 2}, "consumer": {"retry_interval_max": 0.5}})
    pipeline.start_consumer(conf=conf, env=notify_socket.env(1.0), wait=False)
    code, body = pipeline.wait_for(lambda: (h := pipeline.health("consumer"))[0] == 503 and h,
                                   15, "consumer health failing")
    assert body["checks"]["broker"]["status"] == "failing"
    assert body["checks"]["database"]["status"] == "ok"
    fields = notify_socket.wait_for("STATUS", "failing", 5)
    assert "READY" not in fields
    scraped = pipeline.scrape("consumer")
    assert scraped["lifecycle_consumer_broker_connected"] == 0
    assert scraped['lifecycle_consumer_health_status{status="failing"}'] == 1


def test_a_metrics_port_in_use_stops_the_service_naming_the_option(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "agent.conf"
        conf.write_text(f"[DEFAULT]\nstate_path = {tmp_path}/state\n[libvirt]\n"
                        f"connection_uri = test:///default\n[metrics]\nbind_port = {port}\n")
        done = subprocess.run([command("lifecycle-agent"), "--config-file", str(conf)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"[metrics] bind_host 127.0.0.1 / bind_port {port}" in done.stderr


JOURNAL_SOCKET = "/run/systemd/journal/socket"


@pytest.fixture
def journal():
    """journald's socket, played by the test where no journald runs (these machines
    have no systemd); removed afterwards."""
    if os.path.exists(JOURNAL_SOCKET):
        pytest.skip("a real journald runs here: not replacing its socket")
    made_dir = not os.path.isdir(os.path.dirname(JOURNAL_SOCKET))
    os.makedirs(os.path.dirname(JOURNAL_SOCKET), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(JOURNAL_SOCKET)
    yield sock
    sock.close()
    os.unlink(JOURNAL_SOCKET)
    if made_dir:
        os.rmdir(os.path.dirname(JOURNAL_SOCKET))


def test_use_journal_sends_structured_records_to_journald(tmp_path, journal):
    conf = tmp_path / "agent.conf"
    conf.write_text(f"[DEFAULT]\nuse_journal = true\nstate_path = {tmp_path}/state\n"
                    "[libvirt]\nconnection_uri = nowhere://\n[metrics]\nbind_port = 0\n")
    # A bad libvirt URI makes the agent log a warning to the journal, then we stop it.
    proc = subprocess.Popen([command("lifecycle-agent"), "--config-file", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        journal.settimeout(30)
        records = []
        while not any(b"libvirt unavailable" in r for r in records):
            records.append(journal.recv(65536))
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    record = next(r for r in records if b"libvirt unavailable" in r)
    assert b"PRIORITY=4" in record  # WARNING
    assert b"SYSLOG_IDENTIFIER=lifecycle-agent" in record
    assert b"LOGGER_NAME=lifecycle_publisher.agent" in record
    assert b"libvirt unavailable" not in out + err  # the journal only
