"""``lifecycle-manage dlq`` against a real RabbitMQ: dead letters made by a real
consumer (and older ones without the newer headers), listed and shown without being
removed, replayed once their cause is fixed, kept when the broker does not take the
replay, and purged."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from consumer import admission
from consumer.amqp_queue import CAUSE_HEADER, DEAD_LETTER_ID_HEADER, REASON_HEADER
from consumer.cli import confirm
from consumer.cmd import manage
from consumer.topology import Topology, declare
from tests.integration.test_consumer_service import (  # noqa: F401 - topology_queue: a fixture
    HOST, ROUTING_KEY, RunningService, body, journal_seqs, topology_queue)

pytestmark = pytest.mark.integration

STRICT = admission.Policy(identity=admission.PublisherIdentity.HOST_USER)


@pytest.fixture
def queue(topology_queue):  # noqa: F811 - the fixture imported above
    return topology_queue


@pytest.fixture
def lifecycle_manage(amqp_isolation, queue, tmp_path, capsys):
    """``lifecycle-manage ARGS`` in this process, on the test's exchange and queue:
    (exit status, stdout, stderr)."""
    config = tmp_path / "manage.conf"
    config.write_text(f"[DEFAULT]\ntransport_url = {amqp_isolation.transport_url}\n"
                      f"control_exchange = {amqp_isolation.exchange}\n"
                      f"[consumer]\nqueue_name = {queue}\n")

    def run(*argv: str) -> tuple[int, str, str]:
        status = manage.main(["--config-file", str(config), *argv])
        out, err = capsys.readouterr()
        return status, out, err
    return run


def dead_letter_ids(isolation, dlq) -> list[str]:
    """The dead-letter ids in the queue, in its order (taken and given back)."""
    channel = isolation._conn.channel()
    ids = []
    while (m := channel.basic_get(dlq, no_ack=False)) is not None:
        headers = m.properties.get("application_headers") or {}
        ids.append(headers.get(DEAD_LETTER_ID_HEADER) or m.properties.get("message_id"))
    channel.close()
    return ids


def dead_letter_by_consumer(amqp_isolation, db_engine, queue, wait_for, bodies):
    """Run a strict consumer until each of ``bodies`` ((body, properties)) is dead-lettered."""
    running = RunningService(amqp_isolation, db_engine, queue, STRICT).start()
    try:
        for message, properties in bodies:
            amqp_isolation.publish(message, **properties)
        wait_for(lambda: amqp_isolation.message_count(f"{queue}.dlq") == len(bodies),
                 timeout=15, message="the messages dead-lettered")
    finally:
        running.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_list_and_show_read_real_and_old_dead_letters_without_removing_them(
        amqp_isolation, db_engine, queue, lifecycle_manage, wait_for):
    vm = str(uuid.uuid4())
    dead_letter_by_consumer(amqp_isolation, db_engine, queue, wait_for, [
        (body(1, vm), {"message_id": "outbox-1", "user_id": "guest"}),  # refused: publisher
        (b"\xff\x00\x1b[2Jbinary", {"message_id": "outbox-1"}),          # same id, unreadable
        (b"[1, 2, 3]", {"message_id": "json-array"}),
    ])
    # An old dead letter: the reason only, no id, cause, moment or user.
    amqp_isolation.publish(b'{"oslo.version": "2.0", "oslo.message": "{}"}',
                           exchange=f"{queue}.dlx", routing_key=queue, message_id="old-one",
                           application_headers={REASON_HEADER: "message has no event_type"})
    dlq = f"{queue}.dlq"
    order = dead_letter_ids(amqp_isolation, dlq)

    status, out, err = lifecycle_manage("dlq", "list", "--format", "json")
    assert status == 0, err
    letters = json.loads(out)
    assert [d["id"] for d in letters] == order
    assert dead_letter_ids(amqp_isolation, dlq) == order  # all back, in their order
    by_message = {d["message_id"]: d for d in letters if d["message_id"] != "outbox-1"}
    refused, binary = [d for d in letters if d["message_id"] == "outbox-1"]
    assert (refused["event_type"], refused["host"], refused["cause"],
            refused["original_user_id"]) == ("instance.started", HOST, "publisher", "guest")
    assert "may not speak for host" in refused["reason"]
    assert refused["dead_lettered_at"].endswith("+00:00") and refused["size"] == len(body(1, vm))
    assert (binary["event_type"], binary["host"], binary["cause"]) == (None, None, "unreadable")
    assert by_message["json-array"]["cause"] == "unreadable"
    old = by_message["old-one"]
    assert (old["id"], old["reason"], old["cause"], old["dead_lettered_at"],
            old["original_user_id"]) == ("old-one", "message has no event_type", None, None,
                                         None)
    for letter in letters:
        assert {"id", "message_id", "event_type", "host", "reason", "cause",
                "dead_lettered_at", "original_user_id", "size"} <= set(letter)

    status, out, _ = lifecycle_manage("dlq", "list", "--limit", "2")
    assert status == 0 and "2 of 4 dead letters" in out and "\x1b" not in out

    status, out, _ = lifecycle_manage("dlq", "show", binary["id"], "--format", "json")
    shown = json.loads(out)
    assert status == 0 and shown["body_format"] == "binary"
    assert shown["body_hex"].startswith("00000000  ff 00 1b 5b 32 4a")
    assert shown["headers"][CAUSE_HEADER] == "unreadable"
    status, out, _ = lifecycle_manage("dlq", "show", refused["id"])
    assert status == 0 and '"event_type": "instance.started"' in out  # the inner message
    status, out, _ = lifecycle_manage("dlq", "show", "old-one")  # by its message id
    assert status == 0 and "message has no event_type" in out

    status, out, err = lifecycle_manage("dlq", "show", "outbox-1")
    assert status == 1 and out == ""
    assert "2 dead letters have message id outbox-1" in err
    assert refused["id"] in err and binary["id"] in err
    status, out, err = lifecycle_manage("dlq", "show", "no-such-letter")
    assert status == 1 and "no dead letter no-such-letter" in err
    assert dead_letter_ids(amqp_isolation, dlq) == order


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_replay_removes_a_dead_letter_only_once_the_broker_took_it(
        amqp_isolation, db_engine, queue, lifecycle_manage, wait_for):
    """Refused under host_user (guest may not speak for compute-9); replayed while the
    consumer's queue is unbound, the broker returns it and it stays; replayed to an
    exchange that is gone, it stays; once guest is trusted and the queue bound, the
    replay is applied and the dead letter gone."""
    vm = str(uuid.uuid4())
    refused = body(1, vm)
    dead_letter_by_consumer(amqp_isolation, db_engine, queue, wait_for, [
        (refused, {"message_id": "outbox-1", "user_id": "guest"})])
    dlq = f"{queue}.dlq"
    [letter_id] = dead_letter_ids(amqp_isolation, dlq)

    amqp_isolation.channel.queue_unbind(queue, amqp_isolation.exchange, ROUTING_KEY)
    status, out, err = lifecycle_manage("dlq", "replay", letter_id, "--yes")
    assert status == 1
    assert "replayed 0 dead letters" in out and "returned by the broker as unroutable" in err
    assert dead_letter_ids(amqp_isolation, dlq) == [letter_id]

    # An old dead letter naming an exchange that no longer exists.
    amqp_isolation.publish(body(2, vm), exchange=f"{queue}.dlx", routing_key=queue,
                           message_id="gone", application_headers={
                               "x-original-exchange": f"{amqp_isolation.exchange}-gone",
                               "x-original-routing-key": ROUTING_KEY})
    status, out, err = lifecycle_manage("dlq", "replay", "gone", "--yes")
    assert status == 1 and "refused by the broker" in err and "NOT_FOUND" in err
    assert dead_letter_ids(amqp_isolation, dlq) == [letter_id, "gone"]

    amqp_isolation.channel.queue_bind(queue, amqp_isolation.exchange, ROUTING_KEY)
    watch = amqp_isolation.declare_queue("watch", ROUTING_KEY)  # sees what is replayed
    trusting = admission.Policy(identity=admission.PublisherIdentity.HOST_USER,
                                trusted=frozenset({"guest"}))
    running = RunningService(amqp_isolation, db_engine, queue, trusting).start()
    try:
        status, out, err = lifecycle_manage("dlq", "replay", letter_id, "--yes")
        assert status == 0, err
        assert f"replayed 1 dead letter: {letter_id}" in out.splitlines()
        wait_for(lambda: journal_seqs(db_engine) == [1], timeout=15,
                 message="the replayed event applied")
    finally:
        running.stop()
    assert dead_letter_ids(amqp_isolation, dlq) == ["gone"]
    [copy] = amqp_isolation.get_all(watch)
    headers = copy.properties["application_headers"]
    assert copy.body == refused
    assert (copy.properties["user_id"], copy.properties["message_id"],
            copy.properties["delivery_mode"]) == ("guest", "outbox-1", 2)
    assert headers == {"x-lifecycle-replayed-from": letter_id}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_replay_all_and_purge_ask_first(amqp_isolation, db_engine, queue, lifecycle_manage,
                                        wait_for, monkeypatch):
    vms = [str(uuid.uuid4()) for _ in range(3)]
    dead_letter_by_consumer(amqp_isolation, db_engine, queue, wait_for, [
        (body(seq, vm), {"user_id": "guest"}) for seq, vm in enumerate(vms, 1)])
    dlq = f"{queue}.dlq"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    status, out, err = lifecycle_manage("dlq", "replay", "--all")
    assert status == 1 and "add --yes" in err and "Replay all 3 dead letters" in err
    status, out, err = lifecycle_manage("dlq", "purge")
    assert status == 1 and "add --yes" in err
    assert amqp_isolation.message_count(dlq) == 3

    # With no consumer refusing them again, replay --all puts all three on the queue.
    status, out, err = lifecycle_manage("dlq", "replay", "--all", "--yes")
    assert status == 0, err
    assert out.strip().startswith("replayed 3 dead letters: ")
    assert amqp_isolation.message_count(dlq) == 0
    assert amqp_isolation.message_count(queue) == 3
    status, out, _ = lifecycle_manage("dlq", "replay", "--all", "--yes")
    assert (status, out.strip()) == (0, f"no dead letters in {dlq}")

    running = RunningService(amqp_isolation, db_engine, queue, STRICT).start()
    try:  # refuses all three again
        wait_for(lambda: amqp_isolation.message_count(dlq) == 3, timeout=15)
    finally:
        running.stop()
    status, out, _ = lifecycle_manage("dlq", "purge", "--yes")
    assert (status, out.strip()) == (0, f"removed 3 dead letters from {dlq}")
    assert amqp_isolation.message_count(dlq) == 0


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("answer, goes_on", [("y\n", True), ("yes\n", True), ("\n", False),
                                             ("n\n", False), ("", False)])
def test_a_terminal_is_asked(answer, goes_on):
    err = io.StringIO()
    assert confirm.confirmed("Remove 3?", yes=False, stdin=_Terminal(answer), stderr=err) is goes_on
    assert err.getvalue() == "Remove 3? [y/N] "


def test_a_quorum_dead_letter_queue_keeps_its_order_when_listed(amqp_isolation, tmp_path,
                                                                capsys):
    name = amqp_isolation.queue_name("quorum")
    declare(amqp_isolation.channel, Topology(exchange=amqp_isolation.exchange, queue=name,
                                             routing_key=ROUTING_KEY, queue_type="quorum"))
    for i in range(20):
        amqp_isolation.publish(f"letter {i}".encode(), exchange=f"{name}.dlx", routing_key=name,
                               message_id=f"m{i}")
    config = tmp_path / "quorum.conf"
    config.write_text(f"[DEFAULT]\ntransport_url = {amqp_isolation.transport_url}\n"
                      f"[consumer]\nqueue_name = {name}\nqueue_type = quorum\n")
    for _ in range(3):
        assert manage.main(["--config-file", str(config), "dlq", "list", "--format", "json"]) == 0
        assert [d["id"] for d in json.loads(capsys.readouterr().out)] == [
            f"m{i}" for i in range(20)]
    assert dead_letter_ids(amqp_isolation, f"{name}.dlq") == [f"m{i}" for i in range(20)]
