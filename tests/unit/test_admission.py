"""consumer.admission: what becomes of one message, by table."""

import datetime
import json
import time

import pytest

from consumer.admission import (
    Admitted, Cause, Foreign, Policy, PublisherIdentity, Refused, admit)
from lifecycle_common import timeutil, wire
from lifecycle_common.wire import compiled_decode
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, Inventory
from lifecycle_common.libvirt_codes import Event, StartedDetail

NOW = 1_796_000_000.0  # the consumer's clock in these tests
HOST = "compute-4"
UUID = "5b0e6f7c-8d9a-4b1c-9e2f-3a4b5c6d7e8f"
ANY = Policy()
HOST_USER = Policy(identity=PublisherIdentity.HOST_USER)
PREFIXED = Policy(identity=PublisherIdentity.HOST_USER, user_template="lifecycle-{host}",
                  trusted=frozenset({"replayer"}))


def event_body(host=HOST, epoch=int(NOW) - 3600, occurred_at=NOW - 1.0, seq=9) -> bytes:
    return wire.encode(notifications.instance_notification(host, epoch, DomainEvent(
        seq=seq, occurred_at=occurred_at, uuid=UUID, name="vm-1",
        event=int(Event.STARTED), detail=int(StartedDetail.BOOTED))))


def heartbeat_body(host=HOST, epoch=int(NOW) - 3600, moment=NOW - 1.0) -> bytes:
    return wire.encode(notifications.heartbeat_notification(
        host, epoch, 9, 10.0, "running", True, now=datetime.datetime.fromtimestamp(moment, timeutil.UTC)))


def inventory_body(host=HOST, epoch=int(NOW) - 3600) -> bytes:
    return wire.encode(notifications.inventory_notification(
        host, epoch, Inventory(seq=3, occurred_at=NOW - 1, reason="periodic", domains=())))


def with_data(body: bytes, **changes) -> bytes:
    outer = json.loads(body)
    inner = json.loads(outer["oslo.message"])
    inner["payload"]["lifecycle_object.data"].update(changes)
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


FOREIGN = json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps({
    "message_id": "m", "publisher_id": "compute.nova-1", "event_type": "compute.instance.update",
    "priority": "INFO", "payload": {}, "timestamp": "2026-11-25 08:54:44.123456"})}).encode()

# name -> (body, user_id, policy, what it becomes, a fragment of the reason)
CASES = {
    "an event, any publisher": (event_body(), None, ANY, Admitted, None),
    "an event from its host's user": (event_body(), HOST, HOST_USER, Admitted, None),
    "an event from another host's user": (
        event_body(), "compute-5", HOST_USER, Cause.PUBLISHER,
        "user 'compute-5' may not speak for host 'compute-4'"),
    "an event without user_id": (
        event_body(), None, HOST_USER, Cause.PUBLISHER, "a message without user_id may not"),
    "an empty user_id": (event_body(), "", HOST_USER, Cause.PUBLISHER, "without user_id"),
    "a heartbeat from another user": (
        heartbeat_body(), "guest", HOST_USER, Cause.PUBLISHER, "may not speak for host"),
    "an inventory from another user": (
        inventory_body(), "guest", HOST_USER, Cause.PUBLISHER, "may not speak for host"),
    "the template's user": (event_body(), "lifecycle-compute-4", PREFIXED, Admitted, None),
    "the bare host name under a template": (
        event_body(), "compute-4", PREFIXED, Cause.PUBLISHER, "only user 'lifecycle-compute-4'"),
    "a trusted publisher": (event_body(), "replayer", PREFIXED, Admitted, None),
    # Clocks decide nothing: a host's epoch and occurred_at are believed whatever the
    # consumer's clock says (a host two hours ahead is applied, not dead-lettered).
    "an epoch far ahead of the consumer's clock": (
        event_body(epoch=int(NOW) + 7200), None, ANY, Admitted, None),
    "an epoch of 2**62 from the host's own user": (
        event_body(epoch=2**62), HOST, HOST_USER, Admitted, None),
    "an event stamped two hours ahead": (
        event_body(occurred_at=NOW + 7200), None, ANY, Admitted, None),
    "a heartbeat stamped two hours ahead": (
        heartbeat_body(moment=NOW + 7200), None, ANY, Admitted, None),
    "a far epoch from another host's user": (
        event_body(epoch=2**62), "compute-5", HOST_USER, Cause.PUBLISHER,
        "user 'compute-5' may not speak for host 'compute-4'"),
    "an event from long ago": (event_body(occurred_at=86400.0), None, ANY, Admitted, None),
    "occurred_at 'yesterday'": (
        with_data(event_body(), occurred_at="yesterday"), None, ANY, Cause.UNREADABLE,
        "occurred_at: 'yesterday' is not a 'date-time'"),
    "not JSON": (b"\xff\x00", None, ANY, Cause.UNREADABLE, "body is not JSON"),
    "text, not bytes": (event_body().decode(), None, ANY, Admitted, None),
    "another publisher's notification": (FOREIGN, None, HOST_USER, Foreign, None),
}


@pytest.mark.parametrize(("body", "user_id", "policy", "becomes", "reason"),
                         list(CASES.values()), ids=list(CASES))
def test_admit(body, user_id, policy, becomes, reason):
    verdict = admit(body, user_id, NOW, policy)
    if isinstance(becomes, Cause):
        assert isinstance(verdict, Refused), verdict
        assert verdict.cause is becomes
        assert reason in verdict.reason
    else:
        assert isinstance(verdict, becomes), verdict


def test_admit_never_raises_whatever_decoding_raises(monkeypatch):
    def explode(body):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(compiled_decode, "decode", explode)
    verdict = admit(event_body(), None, NOW, ANY)
    assert verdict == Refused("cannot be decoded: RecursionError: maximum recursion depth "
                              "exceeded", Cause.UNREADABLE)


def test_the_users_of_hosts_are_the_template_formatted():
    assert PREFIXED.user_for("compute-9") == "lifecycle-compute-9"
    assert HOST_USER.user_for("compute-9") == "compute-9"


def test_the_real_clock_admits_what_an_agent_stamps_now():
    body = event_body(epoch=int(time.time()), occurred_at=time.time())
    assert isinstance(admit(body, None, time.time(), ANY), Admitted)


def test_admit_never_raises_whatever_the_plain_decoder_raises(monkeypatch):
    """A body the compiled types cannot decide goes to wire.decode: whatever that
    raises, admission refuses the message."""
    from lifecycle_common.wire import envelope

    def explode(body):
        raise RecursionError("maximum recursion depth exceeded")
    monkeypatch.setattr(envelope, "decode", explode)
    body = with_data(event_body(), epoch=7.0)  # JSON Schema's integer; not msgspec's int
    assert compiled_decode.decode_typed(body) is None
    assert admit(body, None, NOW, ANY) == Refused(
        "cannot be decoded: RecursionError: maximum recursion depth exceeded", Cause.UNREADABLE)


def test_admission_reads_through_the_compiled_types(monkeypatch):
    """Our own notifications are read by the compiled types, not by wire.decode."""
    from lifecycle_common.wire import envelope
    calls = []
    original = envelope.decode
    monkeypatch.setattr(envelope, "decode", lambda body: calls.append(body) or original(body))
    for body in (event_body(), heartbeat_body(), inventory_body()):
        assert isinstance(admit(body, HOST, NOW, HOST_USER), Admitted)
    assert calls == []
