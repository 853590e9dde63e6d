"""``events tail``'s pure part: records from any body, the filters, the table's line."""

import datetime
import json

import pytest

from consumer.cli import tables, tail
from lifecycle_common import timeutil, wire
from lifecycle_common.wire import schemas, vocabulary
from lifecycle_publisher import notifications
from lifecycle_publisher.domain_event import DomainEvent, DomainSnapshot, Inventory

SEEN = datetime.datetime(2026, 12, 10, 8, 54, 44, 123456, tzinfo=timeutil.UTC)
VM = "0d6f7c9e-1b7a-4c59-9d1e-3f0b8f2a6c11"


def paused(host="compute-1", name="web") -> bytes:
    return wire.encode(notifications.instance_notification(host, 1_700_000_000, DomainEvent(
        seq=42, occurred_at=1_764_000_000.000001, uuid=VM, name=name, event=3, detail=0)))


def inventory() -> bytes:
    return wire.encode(notifications.inventory_notification("compute-1", 1_700_000_000, Inventory(
        seq=7, occurred_at=1_764_000_000.5, reason="start",
        domains=(DomainSnapshot(VM, "web", 1, 1), DomainSnapshot(VM[:-1] + "2", "db", 5, 1)))))


def heartbeat() -> bytes:
    return wire.encode(notifications.heartbeat_notification(
        "compute-1", 1_700_000_000, 9, 1.0, "running", True, now=SEEN))


def test_an_instance_event():
    rec = tail.record(paused(), SEEN)
    assert rec == {"event_type": "instance.paused", "host": "compute-1", "uuid": VM,
                   "name": "web", "power_state": "paused",
                   "occurred_at": "2025-11-24T16:00:00.000001+00:00",
                   "seen_at": "2026-12-10T08:54:44.123456+00:00", "epoch": 1_700_000_000,
                   "seq": 42, "instances": None, "fault": None, "error": None}


def fault_sample(fault: vocabulary.Fault) -> bytes:
    """The wire's sample of ``fault``, as the bus carries it."""
    message = (schemas.SAMPLE_DIR / f"{fault.event_type}.json").read_text()
    return json.dumps({"oslo.version": "2.0", "oslo.message": message}).encode()


@pytest.mark.parametrize("fault", list(vocabulary.Fault), ids=lambda f: f.value)
def test_a_fault_shows_its_instance_and_what_it_says(fault):
    rec = tail.record(fault_sample(fault), SEEN)
    data = json.loads(json.loads(fault_sample(fault))["oslo.message"])["payload"][
        "lifecycle_object.data"]
    assert rec["event_type"] == fault.event_type and rec["error"] is None
    assert (rec["uuid"], rec["name"], rec["seq"], rec["epoch"]) == (
        data["uuid"], data["name"], data["seq"], data["epoch"])
    assert rec["power_state"] is None and rec["instances"] is None
    common = {"uuid", "name", "host", "epoch", "seq", "occurred_at", "first_occurred_at"}
    assert rec["fault"] == {k: v for k, v in data.items() if k not in common}
    json.dumps(rec)


def test_a_fault_row_carries_its_detail_and_colour():
    io_error = tail.record(fault_sample(vocabulary.Fault.IO_ERROR), SEEN)
    rows = tables.FixedWidthRows(tail.COLUMNS, right=tail.RIGHT)
    plain = rows.row(tail.cells(io_error))
    assert "instance.io_error" in plain and "instance-0000002a" in plain
    assert "| virtio-disk0 pause enospc x37 " in plain
    assert "/var/lib/nova" not in plain  # the path is in the JSON record only
    coloured = rows.row(tail.cells(io_error), tail.styles(io_error))
    assert "\x1b[31minstance.io_error" in coloured and "\x1b[31mvirtio-disk0" in coloured
    rebooted = tail.record(fault_sample(vocabulary.Fault.REBOOTED), SEEN)
    assert "\x1b[33minstance.rebooted" in rows.row(tail.cells(rebooted), tail.styles(rebooted))
    assert tail.cells(tail.record(paused(), SEEN))[-1] == "-"  # no detail beyond a fault


@pytest.mark.parametrize("types, shown", [
    (["instance.*"], {"instance.paused", *vocabulary.FAULT_EVENT_TYPES}),
    (["instance.io_error,instance.watchdog"], {"instance.io_error", "instance.watchdog"}),
    ([], {"instance.paused", *vocabulary.FAULT_EVENT_TYPES}),  # the default
])
def test_type_globs_take_the_faults_as_any_other_type(types, shown):
    wanted = tail.Filter(types=tail.parse_types(types))
    records = [tail.record(b, SEEN)
               for b in (paused(), heartbeat(), *(fault_sample(f) for f in vocabulary.Fault))]
    assert {r["event_type"] for r in records if wanted.matches(r)} == shown


def test_instance_filter_takes_an_instance_faults():
    rec = tail.record(fault_sample(vocabulary.Fault.WATCHDOG), SEEN)
    assert tail.Filter(instance=rec["uuid"]).matches(rec)
    assert not tail.Filter(instance=VM).matches(rec)


def test_inventory_and_heartbeat_have_no_instance_fields():
    inv, beat = tail.record(inventory(), SEEN), tail.record(heartbeat(), SEEN)
    assert (inv["event_type"], inv["instances"], inv["seq"]) == ("host.inventory", 2, 7)
    assert (beat["event_type"], beat["seq"], beat["instances"]) == ("host.heartbeat", 9, None)
    for rec in (inv, beat):
        assert rec["uuid"] is rec["name"] is rec["power_state"] is None
    assert "(2 instances)" in tail.cells(inv)


@pytest.mark.parametrize("body", [b"", b"\xff\x1b[2J", b"[]", b"null", b'{"oslo.version": "2.0"}',
                                  b"[" * 100000, "non-ascii é".encode(),
                                  paused().replace(b"instance.paused", b"instance.bogus")])
def test_a_body_the_decoder_refuses_is_an_unreadable_record(body):
    rec = tail.record(body, SEEN)
    assert rec["event_type"] is None and rec["error"]
    json.dumps(rec)
    line = tables.FixedWidthRows(tail.COLUMNS, right=tail.RIGHT).row(tail.cells(rec))
    assert "unreadable" in line and "\x1b" not in line


def test_default_filter_shows_everything_but_heartbeats():
    default = tail.Filter()
    assert default.matches(tail.record(paused(), SEEN))
    assert default.matches(tail.record(inventory(), SEEN))
    assert not default.matches(tail.record(heartbeat(), SEEN))
    assert default.matches(tail.record(b"garbage", SEEN))


@pytest.mark.parametrize("types, shown", [
    (["instance.*"], {"instance.paused"}),
    (["host.*"], {"host.inventory", "host.heartbeat"}),
    (["host.heartbeat,instance.paused"], {"host.heartbeat", "instance.paused"}),
    (["instance.started", "host.inv*"], {"host.inventory"}),
    (["*"], {"instance.paused", "host.inventory", "host.heartbeat"}),
    (["Instance.*"], set()),  # event types are case-sensitive
])
def test_type_globs(types, shown):
    wanted = tail.Filter(types=tail.parse_types(types))
    records = [tail.record(b, SEEN) for b in (paused(), inventory(), heartbeat(), b"junk")]
    assert {r["event_type"] for r in records if wanted.matches(r)} == shown


def test_host_and_instance_filters():
    here, there = tail.record(paused("compute-1"), SEEN), tail.record(paused("compute-2"), SEEN)
    assert [tail.Filter(hosts=frozenset({"compute-2"})).matches(r) for r in (here, there)] == [
        False, True]
    assert tail.Filter(instance=VM).matches(here)
    assert not tail.Filter(instance=VM[:-1] + "0").matches(here)
    assert not tail.Filter(instance=VM).matches(tail.record(inventory(), SEEN))
    assert not tail.Filter(hosts=frozenset({"compute-1"})).matches(tail.record(b"x", SEEN))


def test_parse_types():
    assert tail.parse_types(None) == ()
    assert tail.parse_types(["a,b", " c ", ",,", "d"]) == ("a", "b", "c", "d")


def test_the_row_is_escaped_cut_and_coloured_by_power_state():
    rec = tail.record(paused(name="vm\x1b]0;owned\x07" + "x" * 40), SEEN)
    rows = tables.FixedWidthRows(tail.COLUMNS, right=tail.RIGHT)
    plain = rows.row(tail.cells(rec))
    coloured = rows.row(tail.cells(rec), tail.styles(rec))
    assert "\x1b" not in plain and "vm\\x1b]0;own" in plain and "~" in plain
    assert plain.startswith("| 08:54:44.123456 | compute-1 ")
    assert len(plain) == len(rows.header().splitlines()[0])
    assert "\x1b[33mpaused" in coloured
    assert coloured.replace("\x1b[33m", "").replace("\x1b[0m", "") == plain


@pytest.mark.parametrize("isatty, environ, expected", [
    (True, {}, True), (False, {}, False), (True, {"NO_COLOR": "1"}, False),
    (True, {"NO_COLOR": ""}, True),
])
def test_colour_only_on_a_terminal_without_no_color(isatty, environ, expected):
    assert tail.use_colour(isatty, environ) is expected
