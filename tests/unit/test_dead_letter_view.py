"""What ``lifecycle-manage dlq`` reads of a dead letter: any body, any headers, never
an exception; the replay's exchange, key, user and headers."""

import datetime
import decimal
import json

import pytest

from consumer.amqp_queue import (
    CAUSE_HEADER, DEAD_LETTER_ID_HEADER, DEAD_LETTERED_AT_HEADER, ORIGINAL_USER_HEADER,
    REASON_HEADER)
from consumer.cli import dead_letter_view as view
from lifecycle_common import wire
from lifecycle_common.wire import limits
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent


def notification(host="compute-1") -> bytes:
    return wire.encode(notifications.instance_notification(host, 1_700_000_000, DomainEvent(
        seq=1, occurred_at=1_764_000_000.0, uuid="0d6f7c9e-1b7a-4c59-9d1e-3f0b8f2a6c11",
        name="web", event=2, detail=0)))


def envelope(message) -> bytes:
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(message)}).encode()


HOSTILE_BODIES = [
    b"", b"\xff\xfe\x00", b"\x1b]0;pwned\x07", b"null", b"[]", b"123", b'"a string"',
    b"{", b'{"oslo.version": "2.0"}', b'{"oslo.version": "2.0", "oslo.message": 7}',
    b'{"oslo.version": "2.0", "oslo.message": "[1]"}', b'{"oslo.version": "2.0", "oslo.message": "{"}',
    envelope({"event_type": 7, "payload": []}),
    envelope({"event_type": ["instance.started"], "payload": {"lifecycle_object.data": 5}}),
    envelope({"event_type": "instance.started", "payload": {"lifecycle_object.data": {"host": 9}}}),
    b"[" * 10000 + b"]" * 10000,  # deeper than a JSON parser recurses
    b'{"a": ' * 500 + b"1" + b"}" * 500,
    b"\x00" * (limits.BODY_BYTES + 1),
    "héllo".encode("latin-1"),
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_any_body_is_described_without_an_exception(body):
    letter = view.read(body, {"application_headers": {REASON_HEADER: "x"}})
    assert (letter.event_type, letter.host) in {(None, None), ("instance.started", None)}
    assert letter.size == len(body)
    detail = letter.detail()
    json.dumps(detail)  # JSON-ready
    shown_as = detail["body_format"]
    assert shown_as in ("json", "text", "binary")
    others = {"json": ("body_text", "body_hex"), "text": ("body_json", "body_hex"),
              "binary": ("body_json", "body_text")}[shown_as]
    assert all(detail[k] is None for k in others)
    assert "\x1b" not in view.render(detail) and "\x07" not in view.render(detail)


def test_a_notification_says_its_event_type_and_host_and_is_shown_inside_out():
    letter = view.read(notification("compute-7"), {"message_id": "outbox-3"})
    assert (letter.id, letter.event_type, letter.host) == ("outbox-3", "instance.started", "compute-7")
    inner = letter.detail()["body_json"]["oslo.message"]
    assert inner["payload"]["lifecycle_object.data"]["name"] == "web"


def test_the_headers_of_a_dead_letter_and_of_an_old_one():
    headers = {REASON_HEADER: "no", CAUSE_HEADER: "publisher", DEAD_LETTER_ID_HEADER: "dl-1",
               DEAD_LETTERED_AT_HEADER: "2026-12-10T08:00:00.000001+00:00",
               ORIGINAL_USER_HEADER: "compute-2", "x-original-exchange": "nova",
               "x-original-routing-key": "notifications.info"}
    letter = view.read(b"{}", {"message_id": "outbox-1", "application_headers": headers})
    assert letter.summary() == {
        "id": "dl-1", "message_id": "outbox-1", "event_type": None, "host": None,
        "reason": "no", "cause": "publisher", "dead_lettered_at": "2026-12-10T08:00:00.000001+00:00",
        "original_user_id": "compute-2", "original_exchange": "nova",
        "original_routing_key": "notifications.info", "size": 2}
    old = view.read(b"{}", {"message_id": "outbox-1"})
    assert (old.id, old.reason, old.cause, old.dead_lettered_at, old.original_user_id) == (
        "outbox-1", None, None, None, None)
    nothing = view.read(b"{}", {"application_headers": "not a table"})
    assert nothing.id == "" and nothing.message_id is None


def test_hostile_header_values_are_text_or_none():
    letter = view.read(b"", {"message_id": 12, "application_headers": {
        REASON_HEADER: b"\xffbytes", CAUSE_HEADER: ["a"], DEAD_LETTER_ID_HEADER: 7,
        "x-death": [{"reason": "rejected"}, "odd"], "nested": {"when": datetime.datetime(2026, 1, 1),
                                                        "d": decimal.Decimal("1.5")}}})
    assert (letter.id, letter.message_id, letter.reason, letter.cause) == ("7", "12", "\ufffdbytes", None)
    assert json.dumps(letter.detail()["headers"])


def test_a_letter_the_broker_dead_lettered_itself_says_so_from_x_death():
    death = {"reason": "rejected", "queue": "q", "exchange": "nova", "count": 1,
             "routing-keys": ["notifications.info"], "time": datetime.datetime(2026, 12, 10, 8)}
    letter = view.read(b"{}", {"message_id": "m", "application_headers": {"x-death": [death]}})
    assert letter.reason == "dead-lettered by the broker: rejected"
    assert (letter.original_exchange, letter.original_routing_key, letter.dead_lettered_at) == (
        "nova", "notifications.info", "2026-12-10T08:00:00.000000+00:00")


def test_find_by_dead_letter_id_or_every_one_with_the_message_id():
    a = view.read(b"", {"message_id": "outbox-1", "application_headers": {DEAD_LETTER_ID_HEADER: "a"}})
    b = view.read(b"", {"message_id": "outbox-1", "application_headers": {DEAD_LETTER_ID_HEADER: "b"}})
    old = view.read(b"", {"message_id": "outbox-2"})
    assert view.find([a, b, old], "b") == [b]
    assert view.find([a, b, old], "outbox-1") == [a, b]
    assert view.find([a, b, old], "outbox-2") == [old]
    assert view.find([a, b, old], "zzz") == []


def test_a_replay_goes_back_where_it_came_from_as_the_replaying_user_without_dead_letter_headers():
    headers = {REASON_HEADER: "no", CAUSE_HEADER: "publisher", DEAD_LETTER_ID_HEADER: "dl-1",
               DEAD_LETTERED_AT_HEADER: "t", ORIGINAL_USER_HEADER: "compute-2",
               "x-original-exchange": "nova", "x-original-routing-key": "other.info",
               "x-death": [], "x-trace": "kept"}
    letter = view.read(b"body", {"message_id": "outbox-1", "content_type": "application/json",
                                 "content_encoding": "utf-8", "application_headers": headers,
                                 "user_id": "compute-2"})
    plan = view.replay(letter, "replayer", "openstack", "notifications.info")
    assert (plan.exchange, plan.routing_key, plan.body) == ("nova", "other.info", b"body")
    assert plan.properties == {
        "delivery_mode": 2, "user_id": "replayer", "message_id": "outbox-1",
        "content_type": "application/json", "content_encoding": "utf-8",
        "application_headers": {"x-trace": "kept", "x-lifecycle-replayed-from": "dl-1"}}
    bare = view.replay(view.read(b"x", {}), "replayer", "openstack", "notifications.info")
    assert (bare.exchange, bare.routing_key) == ("openstack", "notifications.info")
    assert "message_id" not in bare.properties


def test_a_binary_body_is_shown_as_hex_and_cut():
    shown = view.describe_body(bytes(range(256)) * 20)
    lines = shown["body_hex"].splitlines()
    assert lines[0] == ("00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  "
                        "................")
    assert len(lines) == view.HEX_LIMIT // 16 + 1 and lines[-1] == "... (5120 bytes in all)"
    assert shown["body_format"] == "binary" and shown["body_text"] is None
