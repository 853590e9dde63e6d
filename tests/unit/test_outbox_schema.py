"""The outbox's schema: row ids the outbox assigns in commit order, the high marks kept
by deletes, and the migration of an outbox of the first schema (AUTOINCREMENT ids, the
last seq recorded by every append) when it is opened."""

from __future__ import annotations

import logging
import sqlite3
import sys
import time

import pytest

from lifecycle_publisher import outbox as outbox_module
from lifecycle_publisher.errors import OutboxFull
from lifecycle_publisher.outbox import SCHEMA_VERSION, Epoch, Outbox, OutboxRow

NOW = 1_795_596_800.0


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state" / "outbox.sqlite")


def rows(*seqs: int) -> list[tuple[int, str, bytes]]:
    return [(seq, "instance.started", f"body-{seq}".encode()) for seq in seqs]


def schema(path: str) -> tuple[str, int]:
    db = sqlite3.connect(path)
    try:
        (sql,) = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()
        (version,) = db.execute("PRAGMA user_version").fetchone()
    finally:
        db.close()
    return sql, version


# -- row ids ----------------------------------------------------------------------------

def test_append_returns_the_ids_of_its_rows_in_order(path):
    outbox = Outbox(path)
    first = outbox.append(rows(1, 2, 3))
    second = outbox.append(rows(4))
    assert outbox.append([]) == []
    fetched = outbox.fetch_after(0, 100)
    assert [r.id for r in fetched] == first + second
    assert [r.seq for r in fetched] == [1, 2, 3, 4]
    assert first + second == sorted(set(first + second))


def test_a_row_with_a_lower_seq_written_later_is_still_read_after_the_cursor(path):
    """Why rows are not keyed by their seq: an inventory takes its number before it
    lists the domains while events go on being written, and a held STOPPED event is
    written after later ones. The publisher reads on from the last id it saw."""
    outbox = Outbox(path)
    outbox.append(rows(11, 12))
    cursor = outbox.fetch_after(0, 100)[-1].id
    outbox.append(rows(10))  # the inventory, or the held STOPPED
    assert [r.seq for r in outbox.fetch_after(cursor, 100)] == [10]


def test_ids_are_never_given_twice_even_once_the_last_rows_are_deleted(path):
    outbox = Outbox(path)
    ids = outbox.append(rows(1, 2, 3))
    outbox.delete(ids[-1:])  # the highest row confirmed first
    [later] = outbox.append(rows(4))
    assert later > ids[-1]
    outbox.delete(ids + [later])
    assert outbox.pending() == 0
    outbox.close()
    again = Outbox(path)
    [after_restart] = again.append(rows(5))
    assert after_restart > later


def test_the_sequence_goes_on_after_a_restart_with_every_row_deleted(path):
    outbox = Outbox(path)
    outbox.open_epoch(now=NOW)
    ids = outbox.append(rows(7, 3))  # committed out of order: the high mark is 7
    ids += outbox.append(rows(5))
    outbox.delete(ids)
    outbox.close()
    assert Outbox(path).open_epoch(now=NOW) == Epoch(epoch=int(NOW) + 1, next_seq=8)


def test_an_append_changes_one_page_not_three(path):
    """The first schema's append wrote the table's page, sqlite_sequence's and meta's;
    now only the table's (a page more now and then, when the table grows)."""
    outbox = Outbox(path, auto_checkpoint=False)
    outbox.append(rows(1))
    before = _wal_frames(path)
    for seq in range(2, 202):
        outbox.append(rows(seq))
    assert _wal_frames(path) - before < 260  # the first schema: 600 and more


def _wal_frames(path: str) -> int:
    """mxFrame, from the WAL index's header in the -shm file (see test_outbox.py)."""
    with open(path + "-shm", "rb") as shm:
        header = shm.read(48)
    return int.from_bytes(header[16:20], sys.byteorder)


def test_another_process_writing_the_same_outbox_does_not_collide(path, caplog):
    """A second agent started on the same state by mistake: each Outbox counts its
    ids, and an id the other one took first is read again, once. The append that met
    it says no ids (None): the other's rows lie before its own, and a publisher that
    sent only what was just written would pass them by; it reads the outbox instead."""
    one, other = Outbox(path), Outbox(path)
    a = one.append(rows(1, 2))
    b = other.append(rows(3))
    c = one.append(rows(4))  # its counter says a[-1] + 1: taken by the other
    assert c is None
    ids = [r.id for r in one.fetch_after(0, 100)]
    assert ids == sorted(set(ids)) and ids[:3] == a + b
    assert [r.seq for r in one.fetch_after(0, 100)] == [1, 2, 3, 4]
    assert one.append(rows(5)) == [ids[-1] + 1]  # and counts on from there
    assert "another process writes to it too" in caplog.text


# -- migration from the first schema ---------------------------------------------------

FIRST_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS identity (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def first_schema_outbox(path: str) -> list[tuple]:
    """An outbox as the first schema's agent left it: epoch 41, rows appended (seq 1 to
    40, an inventory's seq 25 committed after 26 to 30), the first 10 and the last
    (the highest id) deleted, so that SQLite's AUTOINCREMENT counter is above every
    remaining id. Returns the rows as that agent's publisher would read them."""
    import os
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(FIRST_SCHEMA)
        db.execute("INSERT INTO identity (key, value) VALUES ('host', 'compute-1')")
        db.execute("INSERT INTO meta (key, value) VALUES ('epoch', 41)")
        order = [*range(1, 25), *range(26, 31), 25, *range(31, 41)]
        for n, seq in enumerate(order):
            db.execute("INSERT INTO outbox (seq, event_type, body, created_at) "
                       "VALUES (?, ?, ?, ?)",
                       (seq, "instance.started", f"body-{seq}".encode(), NOW + n))
            db.execute("INSERT INTO meta (key, value) VALUES ('last_seq', ?) ON CONFLICT(key) "
                       "DO UPDATE SET value = MAX(value, excluded.value)", (seq,))
        db.execute("DELETE FROM outbox WHERE id <= 10 OR id = (SELECT MAX(id) FROM outbox)")
        return db.execute(
            "SELECT id, seq, event_type, body, created_at FROM outbox ORDER BY id").fetchall()
    finally:
        db.close()


def test_a_first_schema_outbox_is_migrated_with_every_row_in_its_order(path, caplog):
    before = first_schema_outbox(path)
    assert "AUTOINCREMENT" in schema(path)[0]
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.outbox")

    outbox = Outbox(path)
    sql, version = schema(path)
    assert "AUTOINCREMENT" not in sql and version == SCHEMA_VERSION
    assert "migrated to schema 2" in caplog.text and "29 rows" in caplog.text
    # The same rows, ids, order and bodies: what the publisher reads is unchanged.
    assert outbox.fetch_after(0, 100) == [OutboxRow(*r[:4]) for r in before]
    assert outbox.fetch_after(before[5][0], 3) == [OutboxRow(*r[:4]) for r in before[6:9]]
    assert outbox.pending() == len(before) == 29
    assert outbox.depth() == (29, before[0][4])  # created_at kept
    outbox.claim("compute-1")  # the identity kept
    assert outbox.open_epoch(now=NOW) == Epoch(epoch=42, next_seq=41)
    # No id is given twice: the deleted highest row's id (40) included.
    [new_id] = outbox.append(rows(41))
    assert new_id == 41


def test_a_migrated_outbox_keeps_its_sequence_once_every_row_is_published(path):
    before = first_schema_outbox(path)
    outbox = Outbox(path)
    outbox.delete([r[0] for r in before])
    outbox.close()
    again = Outbox(path)
    assert again.open_epoch(now=NOW) == Epoch(epoch=42, next_seq=41)
    assert again.append(rows(41)) == [41]


def test_a_first_schema_outbox_with_no_rows_left_keeps_its_high_marks(path):
    first_schema_outbox(path)
    db = sqlite3.connect(path)
    with db:
        db.execute("DELETE FROM outbox")
    db.close()
    outbox = Outbox(path)
    assert outbox.pending() == 0
    assert outbox.open_epoch(now=NOW).next_seq == 41
    assert outbox.append(rows(41)) == [41]


def test_the_migration_is_one_transaction(path, monkeypatch):
    """A disk that refuses part way leaves the first schema's file as it was, and the
    next open migrates it."""
    before = first_schema_outbox(path)
    migrate = outbox_module._migrate_from_autoincrement

    def refused(db, where):
        migrate(db, where)
        raise OutboxFull(where, "database or disk is full")
    monkeypatch.setattr(outbox_module, "_migrate_from_autoincrement", refused)
    with pytest.raises(OutboxFull):
        Outbox(path)
    assert "AUTOINCREMENT" in schema(path)[0]
    monkeypatch.setattr(outbox_module, "_migrate_from_autoincrement", migrate)
    assert Outbox(path).fetch_after(0, 100) == [OutboxRow(*r[:4]) for r in before]


def test_an_outbox_of_this_schema_is_opened_without_a_write(path, caplog):
    outbox = Outbox(path)
    outbox.append(rows(1))  # left open: the WAL stays, and counts the frames written
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.outbox")
    frames = _wal_frames(path)
    again = Outbox(path)
    assert _wal_frames(path) == frames and caplog.text == ""
    assert [r.seq for r in again.fetch_after(0, 10)] == [1]


def test_the_migration_of_a_large_outbox_takes_little_time(path):
    """10,000 rows waiting (a long broker outage) are copied in one transaction at the
    start: about 140 ms here, the check at open included (the bound leaves room for a
    slow machine)."""
    first_schema_outbox(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany("INSERT INTO outbox (seq, event_type, body, created_at) VALUES (?, ?, ?, ?)",
                   [(seq, "instance.started", b"x" * 780, NOW) for seq in range(41, 10041)])
    db.execute("COMMIT")
    db.close()
    started = time.monotonic()
    outbox = Outbox(path)
    assert time.monotonic() - started < 5.0
    assert outbox.pending() == 29 + 10000


# -- the write transaction (a class now, doing what the generator did) ----------------

def test_an_error_in_a_transaction_rolls_it_back_and_goes_on_as_it_is(path):
    outbox = Outbox(path)
    with pytest.raises(KeyError):
        with outbox._transaction() as db:
            db.execute("INSERT INTO outbox (id, seq, event_type, body, created_at) "
                       "VALUES (100, 1, 'instance.started', x'00', 0)")
            raise KeyError("not SQLite's")
    assert not db.in_transaction and outbox.pending() == 0
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # a defect: as it is
        with outbox._transaction() as db:
            db.execute("SELECT * FROM no_such_table")
    assert outbox.append(rows(1)) and outbox.pending() == 1  # the write lock was let go


def test_a_disk_error_in_a_transaction_is_the_agents_error_from_sqlites(path):
    outbox = Outbox(path)
    outbox.append(rows(1))
    db = outbox._db()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(OutboxFull) as raised:
        with outbox._transaction() as same:
            same.execute("INSERT INTO outbox (id, seq, event_type, body, created_at) "
                         "VALUES (100, 2, 'instance.started', ?, 0)", (b"x" * 20000,))
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert not db.in_transaction
    db.execute(f"PRAGMA max_page_count={pages * 100}")
    assert [r.seq for r in outbox.fetch_after(0, 10)] == [1]
    outbox.append(rows(2))
    assert outbox.pending() == 2


def test_writers_of_several_threads_take_turns(path):
    """The transaction holds the process's write lock from BEGIN to COMMIT."""
    import threading
    outbox = Outbox(path)
    outbox.busy_timeout = 0.0  # a collision would raise 'database is locked'
    errors = []

    def write(first):
        try:
            for seq in range(first, first + 300):
                outbox.append(rows(seq))
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)
        finally:
            outbox.close()

    threads = [threading.Thread(target=write, args=(n * 1000,)) for n in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and outbox.pending() == 900
    ids = [r.id for r in outbox.fetch_after(0, 1000)]
    assert ids == sorted(set(ids))


# -- deletes by ranges of ids ---------------------------------------------------------------

@pytest.mark.parametrize("deleted", [
    [], [3], list(range(1, 41)), list(range(5, 25)), [1, 2, 3, 7, 9, 10, 11, 20, 40],
    list(range(1, 41, 2)), [2, 3, 5, 6, 8, 39, 40], [38, 39, 40, 41, 42, 100],
])
def test_a_delete_removes_exactly_the_ids_given(path, deleted):
    outbox = Outbox(path)
    ids = outbox.append(rows(*range(1, 41)))
    assert ids == list(range(1, 41))
    outbox.delete(deleted)
    assert [r.id for r in outbox.fetch_after(0, 100)] == [i for i in ids if i not in deleted]


def test_conditions_of_ids_hold_runs_as_ranges_and_the_rest_as_lists():
    conditions = list(outbox_module._id_conditions([1, 2, 3, 5, 7, 8, 10]))
    assert conditions == [("id BETWEEN ? AND ?", [1, 3]), ("id BETWEEN ? AND ?", [7, 8]),
                          ("id IN (?,?)", [5, 10])]
    singles = list(range(0, 2000, 2))
    assert [len(args) for _, args in outbox_module._id_conditions(singles)] == [500, 500]
    assert list(outbox_module._id_conditions([])) == []
