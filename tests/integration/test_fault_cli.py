"""What operators see of faults, on SQLite, PostgreSQL and MariaDB: ``instance list``
and ``instance show`` with the state's reason, the reboots and the last fault, the
instance's faults, and ``events list`` with each fault's detail and ``--type``.

The rows are written here as the consumer's fold writes them (the faults table, the
journal, the instance's columns), so that these tests say what the reading side does
with them whatever the fold's own tests cover."""

from __future__ import annotations

import datetime
import json

import pytest
import sqlalchemy as sa

from consumer.db import queries
from consumer.db.tables import faults, instances, journal
from consumer.store import Store
from lifecycle_common import timeutil
from tests.integration.test_history import _manage
from tests.integration.test_store import (
    EPOCH, HOST, ISO_UTC_MICROS, OTHER, event, new_uuid, wire_roundtrip)

pytestmark = pytest.mark.integration

AT = datetime.datetime(2026, 11, 25, 8, 55, 10, 412345, tzinfo=timeutil.UTC)
IO_ERROR_FIELDS = {"device": "virtio-disk0", "path": "/var/lib/nova/instances/x/disk",
                   "action": "pause", "reason": "enospc"}


def add_fault(engine, uuid_: str, seq: int, event_type: str, fields: dict, count: int = 1,
              seconds: float = 0.0) -> dict:
    """A fault notification as the consumer applies it now: its journal row and its
    row in faults (the last occurrence ``seconds`` after AT, the first one before)."""
    last = AT + datetime.timedelta(seconds=seconds)
    first = last - datetime.timedelta(seconds=count - 1)
    naive = {"occurred_at": last.replace(tzinfo=None),
             "applied_at": timeutil.utcnow().replace(tzinfo=None)}
    with engine.begin() as conn:
        conn.execute(journal.insert().values(
            host=HOST, epoch=EPOCH, seq=seq, event_type=event_type, instance_uuid=uuid_,
            outcome="applied", **naive))
        conn.execute(faults.insert().values(
            host=HOST, epoch=EPOCH, seq=seq, instance_uuid=uuid_, event_type=event_type,
            first_occurred_at=first.replace(tzinfo=None), count=count,
            fields=json.dumps(fields), **naive))
    return {"event_type": event_type, "occurred_at": timeutil.isoformat(last), **fields,
            "count": count, "first_occurred_at": timeutil.isoformat(first),
            "host": HOST, "epoch": EPOCH, "seq": seq}


@pytest.fixture
def faulty(db_engine):
    """web (on HOST): started, rebooted three times in one notification, its watchdog
    fired, then 37 I/O errors paused it; db (on OTHER): started, nothing else."""
    web, db = new_uuid(), new_uuid()
    store = Store(db_engine)
    store.apply_batch(wire_roundtrip([event("started", 1, web, name="web"),
                                      event("paused", 2, web, name="web")]))
    store.apply_batch(wire_roundtrip([event("started", 1, db, name="db", host=OTHER)]))
    add_fault(db_engine, web, 3, "instance.rebooted", {}, count=3, seconds=1)
    add_fault(db_engine, web, 4, "instance.watchdog", {"action": "pause"}, seconds=2)
    last = add_fault(db_engine, web, 5, "instance.io_error", IO_ERROR_FIELDS, count=37,
                     seconds=40)
    with db_engine.begin() as conn:
        conn.execute(instances.update().where(instances.c.uuid == web).values(
            state_reason="ioerror", reboots=3, last_fault=json.dumps(last)))
    return web, db, last


def test_instances_say_why_they_are_in_their_state(db_engine, faulty):
    web, db, last = faulty
    rows = {r["uuid"]: r for r in queries.list_instances(db_engine)}
    assert (rows[web]["state_reason"], rows[web]["reboots"]) == ("ioerror", 3)
    assert rows[web]["last_fault"] == last
    assert (rows[db]["reboots"], rows[db]["last_fault"]) == (0, None)
    assert queries.get_instance(db_engine, web) == rows[web]


def test_an_instance_faults_newest_last(db_engine, faulty):
    web, db, _ = faulty
    shown = queries.list_faults(db_engine, web)
    assert [(f["seq"], f["event_type"]) for f in shown] == [
        (3, "instance.rebooted"), (4, "instance.watchdog"), (5, "instance.io_error")]
    assert shown[2] == {
        "host": HOST, "epoch": EPOCH, "seq": 5, "event_type": "instance.io_error",
        "occurred_at": "2026-11-25T08:55:50.412345+00:00",
        "first_occurred_at": "2026-11-25T08:55:14.412345+00:00", "count": 37,
        **IO_ERROR_FIELDS, "applied_at": shown[2]["applied_at"]}
    assert ISO_UTC_MICROS.match(shown[2]["applied_at"])
    assert shown[1]["action"] == "pause" and "action" not in shown[0]
    assert [f["seq"] for f in queries.list_faults(db_engine, web, limit=2)] == [4, 5]
    assert queries.list_faults(db_engine, db) == []


def test_events_carry_their_fault_and_filter_by_type(db_engine, faulty):
    web, db, _ = faulty
    events = {e["seq"]: e for e in queries.list_events(db_engine, instance=web)}
    assert events[2]["fault"] is None and events[2]["event_type"] == "instance.paused"
    assert events[3]["fault"] == {"count": 3}
    assert events[4]["fault"] == {"count": 1, "action": "pause"}
    assert events[5]["fault"] == {"count": 37, **IO_ERROR_FIELDS}
    assert all(ISO_UTC_MICROS.match(e["applied_at"]) for e in events.values())

    def types(**filters):
        return [e["event_type"] for e in queries.list_events(db_engine, **filters)]
    assert types(event_types={"instance.io_error", "instance.watchdog"}) == [
        "instance.watchdog", "instance.io_error"]
    assert types(event_types={"instance.started"}, host=OTHER) == ["instance.started"]
    assert types(event_types=set()) == []


def test_instance_list_and_show_commands(db_url, db_engine, faulty, tmp_path, capsys):
    web, db, last = faulty
    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "list", "--format", "json")
    listed = {r["uuid"]: r for r in json.loads(out)}
    assert status == 0 and listed[web]["last_fault"] == last
    assert {"uuid", "name", "host", "power_state", "deleted", "event_occurred_at",
            "applied_at", "state_reason", "last_fault", "reboots"} <= set(listed[db])

    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "list")
    assert status == 0
    assert "state_reason" in out and "ioerror" in out
    assert "io_error 2026-11-25 08:55:50" in out and "{" not in out

    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "show", web,
                             "--faults", "2", "--format", "json")
    shown = json.loads(out)
    assert status == 0 and shown["last_fault"] == last and shown["reboots"] == 3
    assert [(f["seq"], f["count"]) for f in shown["faults"]] == [(4, 1), (5, 37)]
    assert shown["faults"][1]["path"] == IO_ERROR_FIELDS["path"]
    assert [e["seq"] for e in shown["events"]] == [1, 2, 3, 4, 5]

    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "show", web)
    assert status == 0
    assert ("instance.io_error at 2026-11-25T08:55:50.412345+00:00: "
            "virtio-disk0 pause enospc x37") in out
    assert "last 3 faults (of at most 20), oldest first:" in out
    assert "| first_occurred_at" in out and " x3 " in out

    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "show", db, "--faults", "0",
                             "--format", "json")
    assert status == 0 and json.loads(out)["faults"] == []


def test_events_list_command_shows_fault_details_and_filters_by_type(
        db_url, db_engine, faulty, tmp_path, capsys):
    web, db, _ = faulty
    status, out, _ = _manage(tmp_path, db_url, capsys, "events", "list", "--format", "json",
                             "--type", "instance.io_error,instance.watch*")
    assert status == 0
    assert [(e["event_type"], e["fault"]) for e in json.loads(out)] == [
        ("instance.watchdog", {"count": 1, "action": "pause"}),
        ("instance.io_error", {"count": 37, **IO_ERROR_FIELDS})]

    status, out, _ = _manage(tmp_path, db_url, capsys, "events", "list", "--type", "instance.*",
                             "--type", "host.*")
    assert status == 0
    assert "| detail" in out and "virtio-disk0 pause enospc x37" in out and "| pause " in out
    assert "/var/lib/nova" not in out and db in out

    status, out, _ = _manage(tmp_path, db_url, capsys, "events", "list", "--format", "json",
                             "--type", "Instance.*")  # event types are case-sensitive
    assert (status, json.loads(out)) == (0, [])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_instance_faults_read_the_index(db_engine):
    """SQLite says which index a query uses: an instance's faults do not scan the table."""
    query = (sa.select(faults).where(faults.c.instance_uuid == "x")
             .order_by(faults.c.occurred_at.desc()).limit(20))
    with db_engine.connect() as conn:
        plan = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + str(query.compile(compile_kwargs={"literal_binds": True})))
        details = " ".join(str(r[-1]) for r in plan)
    assert "ix_faults_instance_uuid_occurred_at" in details, details
