"""lifecycle-webhook's service against a real RabbitMQ and real HTTP(S) receivers that
verify every request as a subscriber would (``lab.webhook_receiver``: the signature
with the ``standardwebhooks`` package, the event with the ``cloudevents`` SDK).

What must hold: every event delivered (by its CloudEvent id), each instance's events
accepted in their order, retries after 408/429/5xx and refused connections with
Retry-After honoured, other 4xx and expired retries dead-lettered with the endpoint's
answer, TLS verified against ca_file, and the health saying what is wrong."""

from __future__ import annotations

import subprocess
import time
import uuid as uuidlib

import pytest

from lab import certs
from lifecycle_common import wire
from lifecycle_common.wire import schemas
from tests.conftest import ServiceThread, wait_for
from tests.support import webhook_run
from tests.support.webhook_run import receivers, secret, secret_path  # noqa: F401 - fixtures
from tests.support.consumer_run import EPOCH, instance_event
from tests.support.faults import fault_notification

pytestmark = pytest.mark.integration

HOST = "compute-wh"
TYPE_PREFIX = "io.libvirt-lifecycle."


@pytest.fixture(autouse=True)
def _schemas():
    schemas.prepare()


@pytest.fixture
def running():
    threads = []

    def run(service) -> ServiceThread:
        """Run ``service``; return once its queue is declared (what is published then
        reaches it)."""
        thread = ServiceThread(service, name=f"webhook-{len(threads)}")
        threads.append(thread)
        wait_for(lambda: service.broker.down_since is None, 15, "the service connected")
        return thread
    yield run
    for thread in threads:
        if thread.thread.is_alive():
            thread.stop()


def publish_stream(isolation, instances: int, per_instance: int, first_seq: int = 1,
                   host: str = HOST) -> dict[str, list[str]]:
    """Events of ``instances`` instances, interleaved, as one agent numbers them;
    returns each instance's CloudEvent ids in order."""
    vms = [str(uuidlib.uuid4()) for _ in range(instances)]
    ids: dict[str, list[str]] = {vm: [] for vm in vms}
    seq = first_seq
    for step in range(per_instance):
        for vm in vms:
            isolation.publish(instance_event(host, seq, vm, paused=step % 2 == 1))
            ids[vm].append(f"{host}:{EPOCH}:{seq}")
            seq += 1
    return ids


def dead_letters(isolation, service) -> list:
    queue = service.queue.topology.dead_letter_queue
    return isolation.get_all(queue)


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_every_event_reaches_a_verifying_receiver_in_order(
        amqp_isolation, receivers, running, secret, secret_path, mode):
    receiver = receivers(secret)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path, mode=mode)
    running(service)
    ids = publish_stream(amqp_isolation, instances=6, per_instance=15)
    every = [i for vm_ids in ids.values() for i in vm_ids]
    receiver.wait_for_ids(every, timeout=30)

    assert receiver.first_acceptances() == ids  # in each instance's order
    assert receiver.partition_overlaps() == []  # one request of an instance at a time
    for received in receiver.requests():
        assert received.signature_ok and received.mode == mode and received.status == 200
        assert received.type in (TYPE_PREFIX + "instance.started",
                                 TYPE_PREFIX + "instance.paused")
        assert received.source == "urn:libvirt-lifecycle:host:" + HOST
        assert received.subject == received.partitionkey
        assert received.time is not None
        assert received.webhook_id == received.id
        assert received.data["lifecycle_object.data"]["uuid"] == received.subject
    wait_for(lambda: service.stats.delivered == len(every), 10, "every delivery counted")
    wait_for(lambda: service.lanes.held == 0, 10, "nothing held")
    assert amqp_isolation.message_count(service.queue.topology.queue) == 0
    assert service.health().status.value == "ok"


def test_503_to_the_first_requests_then_every_event_in_order(
        amqp_isolation, receivers, running, secret, secret_path):
    receiver = receivers(secret, fail_first=12, fail_status=503)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  retry_interval_max=1.0)
    running(service)
    ids = publish_stream(amqp_isolation, instances=4, per_instance=10)
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=60)
    assert receiver.first_acceptances() == ids
    assert receiver.statuses()[503] == 12
    assert service.stats.retries == 12
    assert dead_letters(amqp_isolation, service) == []


def test_retry_after_holds_every_instance_until_the_moment_it_names(
        amqp_isolation, receivers, running, secret, secret_path):
    """One 429 among 2xx answers (a rate limiter): its Retry-After holds every
    instance's events all the same."""
    receiver = receivers(secret)
    receiver.hold()
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  retry_interval_max=1.0, max_in_flight=4)
    running(service)
    ids = publish_stream(amqp_isolation, instances=6, per_instance=2)
    wait_for(lambda: receiver.pending() == 4, 10, "four requests held")
    receiver.fail_first(1, status=429, retry_after=3)
    receiver.delay(0)
    receiver.release()  # one answered 429 (Retry-After: 3), three 200
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=30)
    requests = receiver.requests()
    assert sorted(r.status for r in requests[:4]) == [200, 200, 200, 429]
    [refused] = [r for r in requests if r.status == 429]
    # Once the service has read the 429 (the three 200s answered with it may be read
    # first, and free their instances' next events: within a moment), nothing, of any
    # instance, before the 3 s it asked (not the 1 s back-off cap).
    after = sorted(r.at - refused.answered_at for r in requests if r.at > refused.answered_at)
    assert after and not [t for t in after if 0.5 <= t < 3.0], after
    assert after[-1] >= 3.0
    assert receiver.first_acceptances() == ids


def test_a_failing_endpoint_is_probed_one_request_at_a_time(
        amqp_isolation, receivers, running, secret, secret_path):
    receiver = receivers(secret, fail_first=15, fail_status=503)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  retry_interval_max=0.5, max_in_flight=8)
    running(service)
    ids = publish_stream(amqp_isolation, instances=8, per_instance=3)
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=60)
    requests = sorted(receiver.requests(), key=lambda r: r.at)
    # The first eight went together, before any answer; once they were answered (503),
    # one request at a time until one is accepted.
    burst_answered = max(r.answered_at for r in requests[:8])
    probes = [r for r in requests if r.at > burst_answered]
    probes = probes[:next(i for i, r in enumerate(probes) if r.status == 200) + 1]
    assert len(probes) >= 7 and [r.status for r in probes[:-1]] == [503] * (len(probes) - 1)
    for a, b in zip(probes, probes[1:]):
        assert b.at >= a.answered_at, "two requests at once to a failing endpoint"
    assert receiver.first_acceptances() == ids


def test_a_400_dead_letters_that_event_and_its_instance_goes_on(
        amqp_isolation, receivers, running, secret, secret_path):
    receiver = receivers(secret)
    ids = None

    service = webhook_run.service(amqp_isolation, receiver.url, secret_path)
    running(service)
    vm = str(uuidlib.uuid4())
    refused = f"{HOST}:{EPOCH}:3"
    receiver.refuse(lambda r: r.id == refused, status=400, body="unknown tenant")
    for seq in range(1, 6):
        amqp_isolation.publish(instance_event(HOST, seq, vm, paused=seq % 2 == 0))
    ids = [f"{HOST}:{EPOCH}:{seq}" for seq in range(1, 6)]
    receiver.wait_for_ids([i for i in ids if i != refused], timeout=30)
    assert receiver.first_acceptances() == {vm: [i for i in ids if i != refused]}
    # the refused one was answered before the next was sent
    order = [r.id for r in receiver.requests()]
    assert order.index(refused) < order.index(f"{HOST}:{EPOCH}:4")
    letters = wait_for(lambda: dead_letters(amqp_isolation, service), 10, "the dead letter")
    assert len(letters) == 1
    headers = letters[0].properties["application_headers"]
    assert "400" in headers["x-lifecycle-error"]
    assert "unknown tenant" in headers["x-lifecycle-error"]
    assert headers["x-lifecycle-cause"] == "endpoint"
    assert wire.decode(letters[0].body).payload.seq == 3
    wait_for(lambda: service.dead_letters["endpoint"] == 1, 10, "the dead letter counted")


def test_retries_expire_into_the_dead_letter_queue_with_the_last_answer(
        amqp_isolation, receivers, running, secret, secret_path):
    receiver = receivers(secret, fail_first=10_000, fail_status=502)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  retry_for=2.0, retry_interval_max=0.5)
    running(service)
    publish_stream(amqp_isolation, instances=1, per_instance=1)
    wait_for(lambda: service.health().checks[1].status.value == "degraded", 10,
             "the endpoint's check degraded")
    assert "502" in service.health().checks[1].detail
    letters = wait_for(lambda: dead_letters(amqp_isolation, service), 15, "the dead letter")
    reason = letters[0].properties["application_headers"]["x-lifecycle-error"]
    assert reason.startswith("retries expired after") and "502" in reason
    assert letters[0].properties["application_headers"]["x-lifecycle-cause"] == "expired"
    assert service.health().status.value != "failing"  # a restart would not fix it


def test_an_endpoint_down_for_a_while_gets_everything_once_it_is_back(
        amqp_isolation, receivers, running, secret, secret_path):
    receiver = receivers(secret)
    receiver.down_for(4.0)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  retry_interval_max=1.0, prefetch=4)
    running(service)
    ids = publish_stream(amqp_isolation, instances=3, per_instance=5)
    wait_for(lambda: "refused" in service.health().checks[1].detail, 10,
             "the health to say the endpoint refuses connections")
    assert service.metrics.registry.get_sample_value("lifecycle_webhook_endpoint_up") == 0
    # the backlog waits on the queue (4 taken: the prefetch), and the metrics show it
    wait_for(lambda: service.metrics.registry.get_sample_value(
        "lifecycle_webhook_queue_messages") == 11, 10, "the backlog of 11 on the queue")
    assert service.lanes.held == 4
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=30)
    assert receiver.first_acceptances() == ids
    wait_for(lambda: service.health().status.value == "ok", 10, "the health back to ok")


def test_event_types_filter_what_is_delivered(amqp_isolation, receivers, running, secret,
                                              secret_path):
    receiver = receivers(secret)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  event_types=["instance.watchdog"])
    running(service)
    vm = str(uuidlib.uuid4())
    amqp_isolation.publish(instance_event(HOST, 1, vm))
    amqp_isolation.publish(wire.encode(fault_notification(
        "instance.watchdog", 2, vm, HOST, EPOCH, time.time(), {"action": "pause"})))
    amqp_isolation.publish(instance_event(HOST, 3, vm, paused=True))
    receiver.wait_for_ids([f"{HOST}:{EPOCH}:2"], timeout=30)
    wait_for(lambda: service.stats.filtered == 2, 10, "the other two acked")
    assert [r.type for r in receiver.requests()] == [TYPE_PREFIX + "instance.watchdog"]
    assert receiver.requests()[0].data["lifecycle_object.data"]["action"] == "pause"
    assert amqp_isolation.message_count(service.queue.topology.queue) == 0


def test_hostile_and_foreign_messages_are_never_sent(amqp_isolation, receivers, running,
                                                     secret, secret_path):
    receiver = receivers(secret)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path)
    running(service)
    amqp_isolation.publish(b"\xff\xfe not json")
    amqp_isolation.publish(b'{"oslo.version": "2.0", "oslo.message": "{\\"event_type\\": '
                           b'\\"compute.instance.update\\", \\"publisher_id\\": '
                           b'\\"nova-compute:c1\\", \\"payload\\": {}, \\"message_id\\": '
                           b'\\"m\\", \\"priority\\": \\"INFO\\", \\"timestamp\\": \\"t\\"}"}')
    amqp_isolation.publish(instance_event(HOST, 1, str(uuidlib.uuid4())))
    receiver.wait_for_ids([f"{HOST}:{EPOCH}:1"], timeout=30)
    letters = wait_for(lambda: dead_letters(amqp_isolation, service), 10, "the dead letter")
    assert [m.properties["application_headers"]["x-lifecycle-cause"] for m in letters] == [
        "unreadable"]
    wait_for(lambda: service.stats.foreign == 1, 10, "nova's notification acked")
    assert len(receiver.requests()) == 1


def test_at_most_max_in_flight_requests_at_once(amqp_isolation, receivers, running, secret,
                                                secret_path):
    receiver = receivers(secret)
    receiver.hold()
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path, max_in_flight=3)
    running(service)
    ids = publish_stream(amqp_isolation, instances=10, per_instance=2)
    wait_for(lambda: receiver.pending() == 3, 10, "three requests held by the receiver")
    wait_for(lambda: service.lanes.held == 20, 10, "every event taken from the queue")
    assert receiver.pending() == 3 and service.lanes.in_flight == 3
    receiver.delay(0)  # no more holding,
    receiver.release()  # and those held are answered
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=30)
    assert receiver.first_acceptances() == ids


def test_tls_is_verified_against_ca_file(amqp_isolation, receivers, running, secret,
                                         secret_path, tmp_path):
    pki = certs.make_pki(tmp_path / "pki")
    receiver = receivers(secret, certfile=str(pki.server_cert), keyfile=str(pki.server_key))
    trusted = webhook_run.service(amqp_isolation, receiver.url, secret_path, label="trusted",
                                  ca_file=str(pki.ca_cert))
    running(trusted)
    ids = publish_stream(amqp_isolation, instances=1, per_instance=3)
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=30)

    untrusted = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                    label="untrusted")  # the system's CAs
    running(untrusted)
    publish_stream(amqp_isolation, instances=1, per_instance=1, first_seq=100)
    wait_for(lambda: "certificate verify failed" in untrusted.health().checks[1].detail, 15,
             "the untrusted service's health to name the TLS failure")
    assert untrusted.stats.delivered == 0
    assert receiver.tls_errors  # the receiver saw the handshake fail


def test_a_rotation_signs_with_both_secrets(amqp_isolation, receivers, running, tmp_path):
    old, new = webhook_run.new_secret(), webhook_run.new_secret()
    path = webhook_run.secret_file(tmp_path, old, new)
    only_new = receivers(new)
    service = webhook_run.service(amqp_isolation, only_new.url, path)
    running(service)
    ids = publish_stream(amqp_isolation, instances=1, per_instance=2)
    only_new.wait_for_ids([i for v in ids.values() for i in v], timeout=30)
    assert all(r.signature_ok for r in only_new.requests())
    signatures = only_new.requests()[0].headers["webhook-signature"].split()
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_second_process_on_the_queue_stands_by_and_takes_over_in_order(
        amqp_isolation, receivers, running, secret, secret_path, queue_type):
    """The queue is single-active-consumer: the second service receives nothing while the
    first runs, and everything after it stops, each instance still in order."""
    receiver = receivers(secret)
    topology = webhook_run.topology(amqp_isolation, queue_type=queue_type)
    first = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                queue_topology=topology)
    second = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                 queue_topology=topology)
    first_thread = running(first)
    running(second)
    ids = publish_stream(amqp_isolation, instances=4, per_instance=5)
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=30)
    assert second.stats.delivered == 0
    receiver.hold()
    more = publish_stream(amqp_isolation, instances=4, per_instance=5, first_seq=1000)
    wait_for(lambda: receiver.pending() >= 1, 10, "a request of the first in flight")
    receiver.delay(0)
    first.stop()  # it waits for its requests in flight: the receiver answers them now
    receiver.release()
    first_thread.stop()
    receiver.wait_for_ids([i for v in more.values() for i in v], timeout=30)
    assert second.stats.delivered > 0
    order = receiver.first_acceptances()
    for vm, vm_ids in more.items():
        assert order[vm] == vm_ids


def test_a_lost_broker_connection_sends_again_without_breaking_order(
        amqp_isolation, receivers, running, secret, secret_path, tcp_forwarder):
    receiver = receivers(secret)
    service = webhook_run.service(
        amqp_isolation, receiver.url, secret_path,
        transport_url=f"rabbit://guest:guest@127.0.0.1:{tcp_forwarder.port}/")
    running(service)
    receiver.delay(0.05)
    ids = publish_stream(amqp_isolation, instances=5, per_instance=10)
    receiver.wait_for(5, timeout=10)
    tcp_forwarder.stop()
    wait_for(lambda: service.broker.down_since is not None, 15, "the connection lost")
    tcp_forwarder.start()
    receiver.wait_for_ids([i for v in ids.values() for i in v], timeout=60)
    assert receiver.first_acceptances() == ids


def test_a_refused_event_holds_its_instance_until_its_dead_letter_is_confirmed(
        amqp_isolation, receivers, running, secret, secret_path):
    """Until the broker confirms the dead letter, the refused message may come back from
    the queue (a stop, a lost connection): its instance's next events must not overtake
    it. A policy makes the dead-letter queue refuse (nack) every copy for a while."""
    receiver = receivers(secret)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path)
    dlq = service.queue.topology.dead_letter_queue
    policy = f"{dlq}-full"
    rabbitmqctl("set_policy", "--apply-to", "queues", policy, f"^{dlq}$",
                '{"max-length": 0, "overflow": "reject-publish"}')
    try:
        running(service)
        vm = str(uuidlib.uuid4())
        receiver.refuse(lambda r: r.id == f"{HOST}:{EPOCH}:1", status=409, body="conflict")
        for seq in (1, 2, 3):
            amqp_isolation.publish(instance_event(HOST, seq, vm, paused=seq == 2))
        wait_for(lambda: service.queue.dead_letters.book.refused >= 2, 20,
                 "the dead letter refused twice by the full dead-letter queue")
        assert [r.id for r in receiver.requests()] == [f"{HOST}:{EPOCH}:1"]
    finally:
        rabbitmqctl("clear_policy", policy)
    receiver.wait_for_ids([f"{HOST}:{EPOCH}:2", f"{HOST}:{EPOCH}:3"], timeout=30)
    wait_for(lambda: service.dead_letters["endpoint"] == 1, 10, "the dead letter confirmed")


def test_retry_for_counts_from_the_first_attempt_whatever_the_reconnections(
        amqp_isolation, receivers, running, secret, secret_path, tcp_forwarder):
    receiver = receivers(secret, fail_first=1_000_000, fail_status=502)
    service = webhook_run.service(
        amqp_isolation, receiver.url, secret_path, retry_for=3.0, retry_interval_max=0.5,
        transport_url=f"rabbit://guest:guest@127.0.0.1:{tcp_forwarder.port}/")
    running(service)
    publish_stream(amqp_isolation, instances=1, per_instance=1)
    receiver.wait_for(lambda: receiver.requests(), timeout=10)
    sessions = service.broker_sessions
    for _ in range(3):  # a connection cut every second or so: each session starts over
        tcp_forwarder.stop()
        wait_for(lambda: service.broker.down_since is not None, 15, "the connection lost")
        tcp_forwarder.start()
        wait_for(lambda: service.broker.down_since is None, 15, "connected again")
        if service.dead_letters["expired"]:
            break
    letters = wait_for(lambda: dead_letters(amqp_isolation, service), 15,
                       "the event dead-lettered once retry_for passed")
    assert letters[0].properties["application_headers"]["x-lifecycle-cause"] == "expired"
    assert service.broker_sessions > sessions


def test_an_endpoint_that_refuses_every_event_makes_the_health_degraded(
        amqp_isolation, receivers, running, secret, secret_path):
    receiver = receivers(webhook_run.new_secret())  # not the service's secret: 401s
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path)
    running(service)
    publish_stream(amqp_isolation, instances=3, per_instance=1)
    wait_for(lambda: service.dead_letters["endpoint"] == 3, 15, "three dead letters")
    check = service.health().checks[1]
    assert check.status.value == "degraded" and "refuses every event" in check.detail
    assert "401" in check.detail


def test_the_backlog_is_known_as_soon_as_the_queue_is_declared(
        amqp_isolation, receivers, running, secret, secret_path):
    """The depth is read every minute here, and its first read comes (as a rule) before the service
    declared its queue (none yet: unknown); once declared, it is read at once, not a
    minute later."""
    receiver = receivers(secret)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path,
                                  depth_interval=60.0)
    running(service)
    wait_for(lambda: service.queue_depth == 0, 10, "the queue's depth read once declared")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def test_a_queue_declared_with_other_arguments_is_named_in_an_error(
        amqp_isolation, receivers, secret, secret_path, caplog):
    """A queue of the same name declared otherwise (by hand, or by another version) is
    a conflict the broker refuses (PRECONDITION_FAILED): the service says which queue and
    what to do, and tries again (a broker side fixed by the operator is taken up)."""
    receiver = receivers(secret)
    service = webhook_run.service(amqp_isolation, receiver.url, secret_path)
    queue = service.queue.topology.queue
    amqp_isolation.channel.queue_declare(queue, durable=True, auto_delete=False)
    thread = ServiceThread(service, name="webhook-conflict")
    try:
        wait_for(lambda: "exists with other arguments" in caplog.text, 15,
                 "the conflict named in an error")
        assert queue in caplog.text and service.broker.down_since is not None
        amqp_isolation.channel.queue_delete(queue)  # the operator deletes it
        wait_for(lambda: service.broker.down_since is None, 40, "connected once it is gone")
    finally:
        thread.stop()
