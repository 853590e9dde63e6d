"""What an operator sees of the running services: /metrics scraped over HTTP during a
run, /healthz and systemd's watchdog following libvirtd and the broker, oslo.log's
options, and a metrics port that cannot be had."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from lab.pipeline import command, virsh
from tests.support import libvirtd as libvirtd_control
from tests.support.systemd_notify import assert_watchdog_fed

pytestmark = pytest.mark.system

URI = "test+unix:///default"
HOST = "obs-host"


def test_both_services_export_what_happened_during_a_run(pipeline):
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI)
    virsh(URI, "suspend", "test")
    virsh(URI, "resume", "test")
    pipeline.wait_for(
        lambda: pipeline.scrape("consumer").get(
            'lifecycle_consumer_events_applied_total{event_type="instance.resumed"}'),
        15, "the consumer to count the resume it applied")
    # A scrape is not one instant: the histograms are collected before the counters, so
    # the scrape that first counted the resume may have read the latency histogram
    # just before the resume's batch observed it (2 of 3 seen, once in a CI run). The
    # next scrape reads both after it.
    consumer = pipeline.scrape("consumer")
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


def test_agent_without_libvirtd_is_degraded_and_not_restarted(pipeline, notify_socket, figure):
    """libvirtd away: the agent reconnects by itself, a restart would not bring libvirtd
    back, so its health is degraded (never failing) and the watchdog stays fed.

    libvirtd's exit closes its sockets: the agent's close callback ("end of file")
    marks libvirt down within milliseconds of the SIGTERM, so /healthz is degraded from
    then on. The deadline counts from the signal: 5 s covers libvirtd's exit (under
    0.1 s) and a /healthz round trip on a loaded machine. (It once failed in CI when
    it counted from ``stop()``'s return, which waited for PID 1 to reap libvirtd's
    zombie, 1 to 2.6 s, and the test then had only 3 s left before "degraded" turned
    into "failing".) That the callback did it, not the 5 s liveness check, shows in
    the detail: libvirt unreachable since the signal."""
    pipeline.start_consumer()
    pipeline.start_agent(HOST, URI, env=notify_socket.env(watchdog_seconds=1.0))
    notify_socket.wait_for("READY", "1", 10)
    notify_socket.wait_for("WATCHDOG", "1", 5)
    name = f"agent-{HOST}"
    assert pipeline.health(name)[0] == 200

    try:
        signalled = libvirtd_control.stop()
        degraded = pipeline.wait_for(lambda: (h := pipeline.health(name))[1]["status"] == "degraded"
                                     and h, max(0.1, 5 - (time.monotonic() - signalled)),
                                     "health degraded within 5 s of libvirtd's SIGTERM")
        at_degraded = time.monotonic() - signalled
        detail = degraded[1]["checks"]["libvirt"]["detail"]
        unreachable_for = float(detail.split("unreachable for ")[1].split("s")[0])
        assert unreachable_for >= at_degraded - 1, detail  # since the signal: the callback
        assert degraded[0] == 200
        assert degraded[1]["checks"]["libvirt"]["status"] == "degraded"
        assert degraded[1]["checks"]["broker"]["status"] == "ok"
        status = assert_watchdog_fed(notify_socket, 4.0, period=1.0)
        assert pipeline.health(name)[1]["checks"]["libvirt"]["status"] == "degraded"
        assert status.get("STATUS", "").startswith("degraded"), status
    finally:
        libvirtd_control.start()
    back = time.monotonic()
    pipeline.wait_for(lambda: pipeline.health(name)[1]["status"] == "ok", 60, "health ok again")
    at_ok = time.monotonic() - back
    figure("health: libvirtd SIGTERM -> degraded", at_degraded * 1000)
    figure("health: libvirtd back -> ok", at_ok * 1000)
    assert pipeline.running(name)
    assert pipeline.scrape(name)["lifecycle_agent_libvirt_reconnects_total"] >= 1


def test_consumer_without_its_broker_is_ready_and_degraded(pipeline, notify_socket):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    conf = pipeline.write_consumer_conf("consumer-nobroker.conf", {
        "DEFAULT": {"transport_url": f"rabbit://guest:guest@127.0.0.1:{port}/"},
        "consumer": {"retry_interval_max": 0.5}})
    pipeline.start_consumer(conf=conf, env=notify_socket.env(1.0), wait=False)
    notify_socket.wait_for("READY", "1", 15)
    code, body = pipeline.wait_for(
        lambda: (h := pipeline.health("consumer"))[1].get("status") == "degraded" and h,
        15, "consumer health degraded")
    assert code == 200
    assert body["checks"]["broker"]["status"] == "degraded"
    assert body["checks"]["database"]["status"] == "ok"
    assert_watchdog_fed(notify_socket, 3.0, period=1.0)
    scraped = pipeline.scrape("consumer")
    assert scraped["lifecycle_consumer_broker_connected"] == 0
    assert scraped['lifecycle_consumer_health_status{status="degraded"}'] == 1


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
