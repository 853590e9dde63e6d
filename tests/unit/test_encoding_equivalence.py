"""The agent's fast way to build and encode a notification gives, byte for byte, what
the plain way gives: the plain way is kept here, as it was written before the tricks
(``notifications.instance_notification`` built through the dataclasses' constructors,
``wire.encode`` through ``Notification.to_message``), and one body is pinned whole."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json

import orjson
import pytest

from lifecycle_common import timeutil
from lifecycle_common.wire import Notification, decode, encode, envelope, limits, payloads, schemas
from lifecycle_common import libvirt_codes
from lifecycle_publisher import notifications, translation
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory
from lifecycle_common.libvirt_codes import DomainState, Event, JobType, ShutoffReason
from lifecycle_publisher.translation import Observed, Transition

HOST = "compute-3"
EPOCH = 1_795_596_800
UUID = "3f9c2a1e-7b4d-4e8a-9c61-2d5f0b8e4a17"
WHEN = datetime.datetime(2026, 11, 25, 8, 54, 44, 123456,
                         tzinfo=datetime.timezone.utc).timestamp()
MESSAGE_ID = "62336c2a-575f-4801-a57b-bc8e9dd1e5cb"


# -- the plain way ----------------------------------------------------------------------

def plain_instance_notification(host, epoch, event, observed=None, previous=None):
    result = translation.translate(event.event, event.detail, observed, previous)
    occurred = timeutil.isoformat_epoch(event.occurred_at)
    payload = payloads.InstanceLifecyclePayload(
        uuid=event.uuid, name=limits.clip_name(event.name), host=host, epoch=epoch,
        seq=event.seq,
        occurred_at=occurred,
        transition=result.transition.value,
        power_state=result.power_state.value if result.power_state else None,
        libvirt_event=libvirt_codes.event_name(event.event),
        libvirt_detail=libvirt_codes.detail_name(event.event, event.detail),
        libvirt_event_code=event.event, libvirt_detail_code=event.detail,
        libvirt_state=(libvirt_codes.state_name(observed.state)
                       if observed is not None and observed.state is not None else None),
        libvirt_reason=(observed.reason
                        if observed is not None and observed.state is not None else None),
        migration_job=libvirt_codes.job_name(observed.job) if observed is not None else None)
    return Notification(event_type=result.transition.event_type, payload=payload,
                        publisher_id=f"lifecycle-agent:{host}",
                        timestamp=f"{occurred[:10]} {occurred[11:26]}", message_id=MESSAGE_ID)


def plain_encode(notification: Notification) -> bytes:
    inner = orjson.dumps(notification.to_message()).decode()
    return b'{"oslo.version":"2.0","oslo.message":' + orjson.dumps(inner) + b"}"


def fast(host, epoch, event, observed=None, previous=None) -> Notification:
    note = notifications.instance_notification(host, epoch, event, observed, previous)
    return dataclasses.replace(note, message_id=MESSAGE_ID)


# -- the table ----------------------------------------------------------------------------

OBSERVED = [None, Observed(state=None), Observed(DomainState.RUNNING, 1),
            Observed(DomainState.PAUSED, 2, JobType.UNBOUNDED), Observed(3, 2, 0),
            Observed(DomainState.SHUTOFF, ShutoffReason.FAILED), Observed(5, 3),
            Observed(9, 1, 17)]
PREVIOUS = [None, Transition.MIGRATED, Transition.STARTED, Transition.PAUSED]
CODES = [(event, detail) for event in [*range(10), 42] for detail in range(10)]
NAMES = ["vm-1", 'quote"and\\backslash', "tab\tnew\nline\r\x01\x1f\x7f", "ünïcödé 名前 🚀",
         "\u2028\u2029", "nul\x00inside", "</script>&<", "x" * 400, ""]


def an_event(event: int, detail: int, name: str = "vm-1", seq: int = 77,
             occurred_at: float = WHEN) -> DomainEvent:
    return DomainEvent(seq=seq, occurred_at=occurred_at, uuid=UUID, name=name,
                       event=event, detail=detail)


@pytest.mark.parametrize("observed", OBSERVED, ids=repr)
def test_every_translation_is_built_and_encoded_as_the_plain_way(observed):
    for (event, detail), previous in itertools.product(CODES, PREVIOUS):
        domain_event = an_event(event, detail)
        plain = plain_instance_notification(HOST, EPOCH, domain_event, observed, previous)
        built = fast(HOST, EPOCH, domain_event, observed, previous)
        assert built == plain, (event, detail, previous)
        assert encode(built) == plain_encode(plain), (event, detail, previous)


def test_the_cache_gives_what_the_plain_translation_gives():
    for (event, detail), observed, previous in itertools.product(CODES, OBSERVED, PREVIOUS):
        for _ in range(2):  # computed, then from the cache
            assert notifications.cached_translated_fields(event, detail, observed, previous) \
                == notifications.translated_fields(event, detail, observed, previous)


def test_enum_and_int_codes_are_one_cache_entry_and_one_body():
    as_enums = an_event(Event.STOPPED, libvirt_codes.StoppedDetail.FAILED)
    as_ints = an_event(5, 5)
    observed_enums = Observed(DomainState.SHUTOFF, ShutoffReason.FAILED)
    observed_ints = Observed(5, 6)
    bodies = {encode(fast(HOST, EPOCH, e, o)) for e in (as_enums, as_ints)
              for o in (observed_enums, observed_ints)}
    assert bodies == {plain_encode(plain_instance_notification(HOST, EPOCH, as_ints,
                                                               observed_ints))}


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_names_that_need_escaping_or_cutting_encode_as_the_plain_way(name):
    domain_event = an_event(Event.STARTED, 0, name=name)
    observed = Observed(DomainState.RUNNING, 1)
    plain = plain_instance_notification(HOST, EPOCH, domain_event, observed)
    built = fast(HOST, EPOCH, domain_event, observed)
    assert built == plain
    assert encode(built) == plain_encode(plain)
    assert decode(encode(built)) == built


def test_moments_encode_as_the_plain_way():
    for occurred_at in (0.0, 1.5, WHEN, WHEN + 0.9999995, 4_102_444_799.999999, 2e9 + 1e-6):
        domain_event = an_event(Event.SUSPENDED, 0, occurred_at=occurred_at)
        plain = plain_instance_notification(HOST, EPOCH, domain_event)
        assert encode(fast(HOST, EPOCH, domain_event)) == plain_encode(plain)


def test_one_body_pinned_whole():
    """Whatever the tricks, this is the body: a change here is a change of the wire."""
    note = fast(HOST, EPOCH, an_event(Event.STARTED, 0, name='vm "1"'),
                Observed(DomainState.RUNNING, 1), Transition.STOPPED)
    assert encode(note) == (
        b'{"oslo.version":"2.0","oslo.message":"{\\"message_id\\":\\"62336c2a-575f-4801-a57b-'
        b'bc8e9dd1e5cb\\",\\"publisher_id\\":\\"lifecycle-agent:compute-3\\",\\"event_type\\":'
        b'\\"instance.started\\",\\"priority\\":\\"INFO\\",\\"payload\\":{\\"lifecycle_object.'
        b'name\\":\\"InstanceLifecyclePayload\\",\\"lifecycle_object.namespace\\":\\"lifecycle'
        b'\\",\\"lifecycle_object.version\\":\\"1.1\\",\\"lifecycle_object.data\\":{\\"uuid\\":'
        b'\\"3f9c2a1e-7b4d-4e8a-9c61-2d5f0b8e4a17\\",\\"name\\":\\"vm \\\\\\"1\\\\\\"\\",\\"host'
        b'\\":\\"compute-3\\",\\"epoch\\":1795596800,\\"seq\\":77,\\"occurred_at\\":\\"2026-11-25'
        b'T08:54:44.123456+00:00\\",\\"transition\\":\\"started\\",\\"power_state\\":\\"running'
        b'\\",\\"libvirt_event\\":\\"STARTED\\",\\"libvirt_detail\\":\\"BOOTED\\",\\"libvirt_'
        b'event_code\\":2,\\"libvirt_detail_code\\":0,\\"libvirt_state\\":\\"RUNNING\\",\\"'
        b'libvirt_reason\\":1,\\"migration_job\\":null}},\\"timestamp\\":\\"2026-11-25 08:54:'
        b'44.123456\\"}"}')
    outer = json.loads(encode(note))
    assert json.loads(outer["oslo.message"])["payload"]["lifecycle_object.data"]["name"] \
        == 'vm "1"'


# -- the other notifications, and what the decoder builds ------------------------------------

def test_inventories_and_heartbeats_encode_as_the_plain_way():
    inventory = Inventory(seq=900, occurred_at=WHEN, reason="reconnect", domains=(
        DomainSnapshot(UUID, "vm-1", DomainState.RUNNING, 1),
        DomainSnapshot("b82e6d04-51c3-4f0a-8d9e-6a7c3e21f590", 'vm-"2"\n', DomainState.SHUTOFF,
                       ShutoffReason.CRASHED)))
    notes = [
        notifications.inventory_notification(HOST, EPOCH, inventory),
        notifications.inventory_notification(HOST, EPOCH, Inventory(
            seq=1, occurred_at=WHEN, reason="start", domains=(), new_state=True)),
        notifications.heartbeat_notification(HOST, EPOCH, 1234, 2.5, "stopping", False),
        notifications.heartbeat_notification(HOST, EPOCH, 0, 10.0, "running", True),
    ]
    for note in notes:
        assert encode(note) == plain_encode(note)


@pytest.mark.parametrize("sample", sorted(schemas.SAMPLE_DIR.glob("*.json")),
                         ids=lambda p: p.stem)
def test_every_sample_decoded_encodes_as_the_plain_way(sample):
    message = json.loads(sample.read_text())
    body = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()
    note = decode(body)
    assert encode(note) == plain_encode(note)
    assert decode(encode(note)) == note


# -- each trick on its own -----------------------------------------------------------------

def test_a_payload_from_the_frozen_dataclass_builder_is_the_constructors():
    fields = dataclasses.asdict(plain_instance_notification(
        HOST, EPOCH, an_event(Event.STARTED, 0), Observed(DomainState.RUNNING, 1)).payload)
    built = payloads.frozen_dataclass_builder(payloads.InstanceLifecyclePayload)(dict(fields))
    constructed = payloads.InstanceLifecyclePayload(**fields)
    assert built == constructed and hash(built) == hash(constructed)
    assert repr(built) == repr(constructed)
    assert list(vars(built)) == [f.name for f in dataclasses.fields(built)]
    assert payloads.to_primitive(built) == payloads.to_primitive(constructed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.seq = 1


def test_the_instance_payload_literal_holds_every_field_in_order():
    """``instance_notification``'s dict literals are what frozen_dataclass_builder relies
    on: every field, in declaration order, nothing else."""
    note = notifications.instance_notification(HOST, EPOCH, an_event(2, 0))
    for instance in (note, note.payload):
        assert list(vars(instance)) == [f.name for f in dataclasses.fields(instance)]


def test_a_new_notification_is_the_constructors():
    payload = plain_instance_notification(HOST, EPOCH, an_event(Event.STARTED, 0)).payload
    built = envelope.new_notification("instance.started", payload, "lifecycle-agent:h",
                                      "2026-11-25 08:54:44.123456")
    constructed = Notification("instance.started", payload, "lifecycle-agent:h",
                               "2026-11-25 08:54:44.123456", message_id=built.message_id)
    assert built == constructed and hash(built) == hash(constructed)
    assert repr(built) == repr(constructed)
    assert list(vars(built)) == [f.name for f in dataclasses.fields(built)]
    assert built.priority == "INFO"
    other = envelope.new_notification("instance.started", payload, "lifecycle-agent:h", "t")
    assert other.message_id != built.message_id  # a new id each time
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.priority = "ERROR"


