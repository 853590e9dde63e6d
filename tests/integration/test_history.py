"""``events list`` and ``instance show`` on SQLite, PostgreSQL and MariaDB: the
journal's rows as the consumer wrote them, filtered, newest last, in the JSON contract."""

from __future__ import annotations

import datetime
import json

import pytest
import sqlalchemy as sa

from consumer.cmd import manage
from consumer.db import queries
from consumer.db.tables import journal
from consumer.store import Store
from lifecycle_common import timeutil
from lifecycle_common.libvirt_codes import DomainState
from tests.integration.test_store import (
    EPOCH, HOST, ISO_UTC_MICROS, OTHER, event, inventory, new_uuid, wire_roundtrip)

pytestmark = pytest.mark.integration

NOW = timeutil.utcnow()


def age(engine, seq: int, host: str, hours: float) -> None:
    """Make journal row ``(host, seq)`` look applied ``hours`` ago."""
    with engine.begin() as conn:
        conn.execute(journal.update().where(journal.c.host == host, journal.c.seq == seq)
                     .values(applied_at=(NOW - datetime.timedelta(hours=hours))
                             .replace(tzinfo=None)))


@pytest.fixture
def history(db_engine):
    """web: defined 3 h ago, started 2 h ago, paused now, and a stale redelivery of its
    start; db on another host, started 30 min ago; an inventory of HOST now."""
    web, db = new_uuid(), new_uuid()
    store = Store(db_engine)
    store.apply_batch(wire_roundtrip([event("defined", 1, web, name="web")]))
    store.apply_batch(wire_roundtrip([event("started", 2, web, name="web")]))
    store.apply_batch(wire_roundtrip([event("started", 1, db, name="db", host=OTHER)]))
    store.apply_batch(wire_roundtrip([event("paused", 3, web, name="web"),
                                      inventory(4, [(web, "web", DomainState.PAUSED)])]))
    # An older event of another epoch: journaled as stale, changes nothing.
    store.apply_batch(wire_roundtrip([event("started", 9, web, name="web", epoch=EPOCH - 1)]))
    age(db_engine, 1, HOST, 3)
    age(db_engine, 2, HOST, 2)
    age(db_engine, 1, OTHER, 0.5)
    return web, db


def test_events_newest_last_with_names_and_iso_timestamps(db_engine, history):
    web, db = history
    events = queries.list_events(db_engine)
    assert [(e["host"], e["seq"]) for e in events] == [
        (HOST, 1), (HOST, 2), (OTHER, 1), (HOST, 3), (HOST, 4), (HOST, 9)]
    first = events[0]
    assert first == {
        "host": HOST, "epoch": EPOCH, "seq": 1, "event_type": "instance.defined",
        "instance_uuid": web, "instance_name": "web", "outcome": "applied",
        "occurred_at": first["occurred_at"], "applied_at": first["applied_at"],
        "fault": None}
    assert all(ISO_UTC_MICROS.match(e["occurred_at"]) and ISO_UTC_MICROS.match(e["applied_at"])
               for e in events)
    inventory_row = events[4]
    assert (inventory_row["event_type"], inventory_row["instance_uuid"],
            inventory_row["instance_name"]) == ("host.inventory", None, None)
    assert events[5]["outcome"] == "stale" and events[5]["epoch"] == EPOCH - 1


def test_events_filtered_by_instance_host_since_and_limited(db_engine, history):
    web, db = history

    def seqs(**filters):
        return [(e["host"], e["seq"]) for e in queries.list_events(db_engine, **filters)]

    assert seqs(instance=web) == [(HOST, 1), (HOST, 2), (HOST, 3), (HOST, 9)]
    assert seqs(instance=db) == [(OTHER, 1)]
    assert seqs(host=OTHER) == [(OTHER, 1)]
    assert seqs(since=NOW - datetime.timedelta(minutes=150)) == [
        (HOST, 2), (OTHER, 1), (HOST, 3), (HOST, 4), (HOST, 9)]
    assert seqs(since=NOW - datetime.timedelta(hours=1), instance=web) == [(HOST, 3), (HOST, 9)]
    assert seqs(limit=2) == [(HOST, 4), (HOST, 9)]  # the newest two, oldest first
    assert seqs(instance=new_uuid()) == []


def _manage(tmp_path, db_url, capsys, *argv) -> tuple[int, str, str]:
    config = tmp_path / "manage.conf"
    config.write_text(f"[database]\nconnection = {db_url}\n")
    status = manage.main(["--config-file", str(config), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_events_list_and_instance_show_commands(db_url, db_engine, history, tmp_path, capsys):
    web, db = history
    status, out, _ = _manage(tmp_path, db_url, capsys, "events", "list", "--instance", web,
                             "--since", "150m", "--format", "json")
    assert status == 0
    assert [(e["seq"], e["event_type"]) for e in json.loads(out)] == [
        (2, "instance.started"), (3, "instance.paused"), (9, "instance.started")]

    status, out, _ = _manage(tmp_path, db_url, capsys, "events", "list", "--host", OTHER)
    assert status == 0 and db in out and "instance.started" in out and web not in out

    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "show", web,
                             "--events", "2", "--format", "json")
    shown = json.loads(out)
    assert status == 0
    assert shown["uuid"] == web and shown["name"] == "web" and shown["power_state"] == "paused"
    assert {"host", "deleted", "event_occurred_at", "applied_at"} <= set(shown)
    assert [e["seq"] for e in shown["events"]] == [3, 9]

    status, out, _ = _manage(tmp_path, db_url, capsys, "instance", "show", web)
    assert status == 0 and "paused" in out and "instance.defined" in out

    missing = new_uuid()
    status, out, err = _manage(tmp_path, db_url, capsys, "instance", "show", missing)
    assert (status, out) == (1, "") and missing in err


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_instance_history_reads_the_index(db_engine):
    """SQLite says which index a query uses: the instance's history does not scan the
    journal."""
    query = (sa.select(journal).where(journal.c.instance_uuid == "x")
             .order_by(journal.c.applied_at.desc()).limit(20))
    with db_engine.connect() as conn:
        plan = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + str(query.compile(compile_kwargs={"literal_binds": True})))
        details = " ".join(str(r[-1]) for r in plan)
    assert "ix_journal_instance_uuid_applied_at" in details, details
