"""ConsumerService against a real RabbitMQ and a real database."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
import sqlalchemy as sa

from consumer import admission
from consumer.amqp_queue import REASON_HEADER, BatchQueue
from consumer.db.tables import instances, journal
from consumer.service import ConsumerService
from consumer.store import Store
from consumer.topology import Topology, declare
from lifecycle_common import broker, wire
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent
from lifecycle_common.libvirt_codes import Event, StartedDetail, SuspendedDetail

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True),
]

HOST = "compute-9"
EPOCH = 1_700_000_000
ROUTING_KEY = "notifications.info"


def body(seq: int, vm: str, paused: bool = False) -> bytes:
    code, detail = ((Event.SUSPENDED, SuspendedDetail.PAUSED) if paused
                    else (Event.STARTED, StartedDetail.BOOTED))
    return wire.encode(notifications.instance_notification(HOST, EPOCH, DomainEvent(
        seq=seq, occurred_at=1_764_000_000.0 + seq, uuid=vm, name=f"vm-{seq}",
        event=int(code), detail=int(detail))))


class RunningService:
    def __init__(self, isolation, db_engine, queue_name, policy=admission.Policy()):
        self.topology = Topology(exchange=isolation.exchange, queue=queue_name,
                                 routing_key=ROUTING_KEY)
        self.service = ConsumerService(
            BatchQueue(broker.Connector(broker.plain(isolation.transport_url)), self.topology,
                       batch_size=50, linger=0.002),
            Store(db_engine), host_down_after=60.0, retry_max=0.5, policy=policy)
        self.thread = threading.Thread(target=self.service.run, name="consumer")

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.service.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the consumer did not stop"


@pytest.fixture
def topology_queue(amqp_isolation):
    """The consumer's queue name, its topology declared (as the service would)."""
    name = amqp_isolation.queue_name("consumer")
    declare(amqp_isolation.channel,
            Topology(exchange=amqp_isolation.exchange, queue=name, routing_key=ROUTING_KEY))
    return name


@pytest.fixture
def run_service(amqp_isolation, db_engine, topology_queue):
    started = []

    def run(policy=admission.Policy()):
        service = RunningService(amqp_isolation, db_engine, topology_queue, policy).start()
        started.append(service)
        return service
    yield run
    for service in started:
        if service.thread.is_alive():
            service.stop()


def journal_seqs(engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(journal.c.seq).order_by(journal.c.seq)).scalars())


def power_states(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.uuid: r.power_state for r in conn.execute(sa.select(instances))}


def test_notifications_are_applied_and_acked(amqp_isolation, db_engine, topology_queue,
                                             run_service, wait_for):
    running = run_service()
    vms = [str(uuid.uuid4()) for _ in range(30)]
    for seq, vm in enumerate(vms, 1):
        amqp_isolation.publish(body(seq, vm))
    amqp_isolation.publish(body(31, vms[0], paused=True))
    wait_for(lambda: len(journal_seqs(db_engine)) == 31, timeout=15,
             message=lambda: f"31 journal rows, have {journal_seqs(db_engine)}")
    states = power_states(db_engine)
    assert set(states) == set(vms)
    assert states[vms[0]] == "paused"
    assert all(states[vm] == "running" for vm in vms[1:])
    running.stop()
    assert amqp_isolation.message_count(topology_queue) == 0  # all acked
    assert amqp_isolation.message_count(f"{topology_queue}.dlq") == 0
    assert running.service.stats.applied == 31


def test_bad_messages_are_dead_lettered_with_their_reason(amqp_isolation, db_engine,
                                                           topology_queue, run_service, wait_for):
    running = run_service()
    before, after = str(uuid.uuid4()), str(uuid.uuid4())
    good = json.loads(body(2, before))
    invalid_message = json.loads(good["oslo.message"])
    invalid_message["payload"]["lifecycle_object.data"]["power_state"] = "exploded"
    del invalid_message["payload"]["lifecycle_object.data"]["seq"]
    invalid = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(invalid_message)})
    foreign = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps({
        "message_id": str(uuid.uuid4()), "publisher_id": "compute.nova-1",
        "event_type": "compute.instance.update", "priority": "INFO",
        "payload": {"nova_object.name": "InstanceUpdatePayload"},
        "timestamp": "2026-11-25 08:54:44.123456"})})

    amqp_isolation.publish(body(1, before))
    amqp_isolation.publish(b"\x00this is not json", message_id="malformed")
    amqp_isolation.publish(invalid.encode(), message_id="invalid")
    amqp_isolation.publish(foreign.encode(), message_id="foreign")
    amqp_isolation.publish(body(3, after))

    wait_for(lambda: journal_seqs(db_engine) == [1, 3], timeout=15,
             message=lambda: f"seqs 1 and 3 applied, have {journal_seqs(db_engine)}")
    dlq = f"{topology_queue}.dlq"
    wait_for(lambda: amqp_isolation.message_count(dlq) == 2, timeout=10,
             message=lambda: f"2 dead letters, have {amqp_isolation.message_count(dlq)}")
    dead = {m.properties["message_id"]: m for m in amqp_isolation.get_all(dlq)}
    assert set(dead) == {"malformed", "invalid"}
    malformed_reason = dead["malformed"].properties["application_headers"][REASON_HEADER]
    invalid_reason = dead["invalid"].properties["application_headers"][REASON_HEADER]
    assert "not JSON" in malformed_reason
    assert invalid_reason.startswith("instance.started: InstanceLifecyclePayload ")
    assert "seq" in invalid_reason or "exploded" in invalid_reason
    assert dead["malformed"].body == b"\x00this is not json"
    assert dead["invalid"].properties["application_headers"]["x-original-routing-key"] == ROUTING_KEY

    # Still running: a later message is applied too.
    amqp_isolation.publish(body(4, before, paused=True))
    wait_for(lambda: journal_seqs(db_engine) == [1, 3, 4], timeout=15)
    assert power_states(db_engine)[before] == "paused"
    assert running.thread.is_alive()
    stats = running.service.stats
    running.stop()
    assert (stats.dead_lettered, stats.foreign) == (2, 1)
    assert amqp_isolation.message_count(topology_queue) == 0
    assert amqp_isolation.message_count(dlq) == 0  # read above


def test_the_same_message_twice_is_applied_once(amqp_isolation, db_engine, topology_queue,
                                                run_service, wait_for):
    running = run_service()
    vm = str(uuid.uuid4())
    message = body(7, vm)
    amqp_isolation.publish(message)
    amqp_isolation.publish(message)
    amqp_isolation.publish(body(8, vm, paused=True))
    wait_for(lambda: running.service.stats.duplicates + running.service.stats.applied == 3,
             timeout=15, message=lambda: f"3 messages handled: {running.service.stats}")
    running.stop()
    assert journal_seqs(db_engine) == [7, 8]
    assert running.service.stats.duplicates == 1
    assert power_states(db_engine) == {vm: "paused"}
    assert amqp_isolation.message_count(topology_queue) == 0


def test_messages_published_while_stopped_are_applied_at_start(amqp_isolation, db_engine,
                                                               topology_queue, run_service,
                                                               wait_for):
    first = run_service()
    vm = str(uuid.uuid4())
    amqp_isolation.publish(body(1, vm))
    wait_for(lambda: journal_seqs(db_engine) == [1], timeout=15)
    first.stop()

    for seq in range(2, 12):
        amqp_isolation.publish(body(seq, vm, paused=seq % 2 == 0))
    wait_for(lambda: amqp_isolation.message_count(topology_queue) == 10, timeout=5)  # waiting
    assert journal_seqs(db_engine) == [1]

    second = run_service()
    wait_for(lambda: journal_seqs(db_engine) == list(range(1, 12)), timeout=15,
             message=lambda: f"seqs 1..11, have {journal_seqs(db_engine)}")
    second.stop()
    assert power_states(db_engine) == {vm: "running"}  # seq 11: started
    assert amqp_isolation.message_count(topology_queue) == 0


def _with_data(message_body: bytes, **changes) -> bytes:
    outer = json.loads(message_body)
    inner = json.loads(outer["oslo.message"])
    inner["payload"]["lifecycle_object.data"].update(changes)
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


def _reasons(isolation, dlq) -> dict[str, str]:
    return {m.properties["message_id"]: m.properties["application_headers"][REASON_HEADER]
            for m in isolation.get_all(dlq)}


def test_yesterday_is_dead_lettered_and_the_consumer_goes_on(amqp_isolation, db_engine,
                                                             topology_queue, run_service,
                                                             wait_for):
    """The message that once stopped every consumer in turn: schema-valid in shape,
    occurred_at 'yesterday'. Its batch-mates before and after it are applied."""
    running = run_service()
    vm = str(uuid.uuid4())
    amqp_isolation.publish(body(1, vm))
    amqp_isolation.publish(_with_data(body(2, vm, paused=True), occurred_at="yesterday"),
                           message_id="yesterday")
    amqp_isolation.publish(body(3, vm, paused=True))
    wait_for(lambda: journal_seqs(db_engine) == [1, 3], timeout=15,
             message=lambda: f"seqs 1 and 3 applied, have {journal_seqs(db_engine)}")
    dlq = f"{topology_queue}.dlq"
    wait_for(lambda: amqp_isolation.message_count(dlq) == 1, timeout=10)
    reasons = _reasons(amqp_isolation, dlq)
    assert reasons == {"yesterday": "instance.paused: InstanceLifecyclePayload 1.1: "
                                    "occurred_at: 'yesterday' is not a 'date-time'"}
    assert power_states(db_engine) == {vm: "paused"}
    assert running.thread.is_alive()
    running.stop()
    assert running.service.dead_letters == {admission.Cause.UNREADABLE: 1}


def test_a_message_the_database_refuses_is_dead_lettered_alone(amqp_isolation, db_engine,
                                                               topology_queue, run_service,
                                                               wait_for):
    """A refusal the schema cannot foresee (here a CHECK constraint of the operator's):
    the batch is split until the refused message stands alone; the rest is applied."""
    sqlite = db_engine.dialect.name == "sqlite"
    with db_engine.begin() as conn:
        if sqlite:  # no ALTER TABLE ... ADD CONSTRAINT there: a trigger refuses the same
            conn.exec_driver_sql(
                "CREATE TRIGGER lc_test_no_forbidden BEFORE INSERT ON instances "
                "WHEN NEW.name = 'vm-forbidden' "
                "BEGIN SELECT RAISE(ABORT, 'lc_test_no_forbidden'); END")
        else:
            conn.exec_driver_sql("ALTER TABLE instances ADD CONSTRAINT lc_test_no_forbidden "
                                 "CHECK (name <> 'vm-forbidden')")
    try:
        vms = [str(uuid.uuid4()) for _ in range(40)]
        for seq, vm in enumerate(vms, 1):
            data = {"name": "vm-forbidden"} if seq == 17 else {}
            amqp_isolation.publish(_with_data(body(seq, vm), **data), message_id=f"m{seq}")
        running = run_service()  # everything is queued: one batch of 40
        wait_for(lambda: len(journal_seqs(db_engine)) == 39, timeout=20,
                 message=lambda: f"39 applied, have {len(journal_seqs(db_engine))}")
        dlq = f"{topology_queue}.dlq"
        wait_for(lambda: amqp_isolation.message_count(dlq) == 1, timeout=10)
        reasons = _reasons(amqp_isolation, dlq)
        assert list(reasons) == ["m17"]
        assert reasons["m17"].startswith("refused by the database: ")
        assert "lc_test_no_forbidden" in reasons["m17"]
        assert 17 not in journal_seqs(db_engine)
        running.stop()
        assert running.service.dead_letters == {admission.Cause.DATABASE: 1}
        assert amqp_isolation.message_count(topology_queue) == 0
    finally:
        with db_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER lc_test_no_forbidden" if sqlite else
                                 "ALTER TABLE instances DROP CONSTRAINT lc_test_no_forbidden")


def test_any_exception_while_applying_dead_letters_only_that_message(
        amqp_isolation, db_engine, topology_queue, run_service, wait_for, monkeypatch):
    """A defect of the store's own (simulated: folding one instance raises) costs the
    message that met it, with the exception as its reason, and nothing else."""
    from consumer import fold as fold_module
    cursed = str(uuid.uuid4())
    fold_note = fold_module.fold_note

    def fold_or_raise(current, note, *args):
        if getattr(note.payload, "uuid", None) == cursed:
            raise KeyError("a defect")
        return fold_note(current, note, *args)
    monkeypatch.setattr(fold_module, "fold_note", fold_or_raise)
    vms = [str(uuid.uuid4()) for _ in range(9)] + [cursed]
    for seq, vm in enumerate(vms, 1):
        amqp_isolation.publish(body(seq, vm), message_id=f"m{seq}")
    running = run_service()
    wait_for(lambda: len(journal_seqs(db_engine)) == 9, timeout=20)
    dlq = f"{topology_queue}.dlq"
    wait_for(lambda: amqp_isolation.message_count(dlq) == 1, timeout=10)
    assert _reasons(amqp_isolation, dlq) == {"m10": "cannot be applied: KeyError: 'a defect'"}
    running.stop()
    assert set(power_states(db_engine)) == set(vms[:9])


def test_host_user_identity_refuses_another_users_messages(amqp_isolation, db_engine,
                                                           topology_queue, run_service,
                                                           wait_for):
    """The broker checks user_id against the login (so guest can only say it is guest);
    with publisher_identity = host_user the consumer refuses what guest says of
    compute-9, and a trusted publisher may speak for any host."""
    strict = admission.Policy(identity=admission.PublisherIdentity.HOST_USER)
    running = run_service(strict)
    vm = str(uuid.uuid4())
    amqp_isolation.publish(body(1, vm), message_id="guest-as-host", user_id="guest")
    amqp_isolation.publish(body(2, vm), message_id="no-user-id")
    dlq = f"{topology_queue}.dlq"
    wait_for(lambda: amqp_isolation.message_count(dlq) == 2, timeout=15)
    assert _reasons(amqp_isolation, dlq) == {
        "guest-as-host": "user 'guest' may not speak for host 'compute-9': publisher_identity "
                         "= host_user accepts only user 'compute-9' or a trusted publisher",
        "no-user-id": "a message without user_id may not speak for host 'compute-9': "
                      "publisher_identity = host_user accepts only user 'compute-9' or a "
                      "trusted publisher"}
    assert journal_seqs(db_engine) == [] and power_states(db_engine) == {}
    running.stop()
    assert running.service.dead_letters == {admission.Cause.PUBLISHER: 2}

    trusting = admission.Policy(identity=admission.PublisherIdentity.HOST_USER,
                                trusted=frozenset({"guest"}))
    running = run_service(trusting)
    amqp_isolation.publish(body(3, vm), user_id="guest")
    wait_for(lambda: journal_seqs(db_engine) == [3], timeout=15)
    running.stop()


def test_faults_are_applied_and_counted_by_type_and_occurrence(
        amqp_isolation, db_engine, topology_queue, run_service, wait_for):
    """Faults reach the database through the bus like lifecycle events, and the
    metrics count their occurrences by type (a coalesced notification by its count)."""
    from tests.integration.test_store_faults import fault_note
    running = run_service()
    vm = str(uuid.uuid4())
    amqp_isolation.publish(body(1, vm))
    for seq, (event_type, count) in enumerate([("instance.io_error", 37),
                                               ("instance.rebooted", 2),
                                               ("instance.io_error", 1),
                                               ("instance.guest_agent", 1)], 2):
        amqp_isolation.publish(wire.encode(fault_note(event_type, seq, vm, host=HOST,
                                                      count=count)))
    wait_for(lambda: len(journal_seqs(db_engine)) == 5, timeout=15,
             message=lambda: f"5 journal rows, have {journal_seqs(db_engine)}")
    running.stop()
    assert amqp_isolation.message_count(f"{topology_queue}.dlq") == 0
    with db_engine.connect() as conn:
        row = conn.execute(sa.select(instances).where(instances.c.uuid == vm)).one()
    assert (row.power_state, row.reboots, row.seq) == ("running", 2, 1)  # faults keep its seq
    assert json.loads(row.last_fault)["count"] == 1
    samples = {(s.name, s.labels.get("event_type")): s.value
               for family in running.service.metrics.registry.collect()
               for s in family.samples if s.name.startswith("lifecycle_consumer_faults")}
    assert samples == {("lifecycle_consumer_faults_total", "instance.io_error"): 38,
                       ("lifecycle_consumer_faults_total", "instance.rebooted"): 2,
                       ("lifecycle_consumer_faults_total", "instance.guest_agent"): 1}
    assert running.service.stats.applied == 5
