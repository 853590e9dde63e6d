"""The outbox against its disk: a full one (SQLite's page limit, and a real full tmpfs),
a corrupt file moved aside at open, and the files' permissions."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat

import pytest

from lifecycle_publisher.errors import OutboxCorrupt, OutboxFull, OutboxUnwritable
from lifecycle_publisher.outbox import Checkpointer, Outbox, outbox_error
from tests.support import tmpfs

BIG = b"x" * 8000  # two pages: each append needs new pages


def rows(*seqs: int, body: bytes = b"body") -> list[tuple[int, str, bytes]]:
    return [(seq, "instance.started", body) for seq in seqs]


def seqs(outbox: Outbox) -> list[int]:
    return [r.seq for r in outbox.fetch_after(0, 1000)]


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "state" / "outbox.sqlite")


class Disk:
    """A tmpfs for an outbox: ``open()`` it, ``fill()`` the disk, ``free()`` it."""

    def __init__(self, mount: str):
        self.mount = mount
        self.path = os.path.join(mount, "state", "outbox.sqlite")
        self.opened: list[Outbox] = []

    def open(self, **kwargs) -> Outbox:
        outbox = Outbox(self.path, **kwargs)
        self.opened.append(outbox)
        return outbox

    def fill(self) -> None:
        self.filler = tmpfs.fill(self.mount)

    def free(self) -> None:
        os.remove(self.filler)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted at the end (its outboxes closed first)."""
    mount = str(tmp_path / "mnt")
    with tmpfs.small_tmpfs(mount, size="1m"):
        disk = Disk(mount)
        try:
            yield disk
        finally:
            for outbox in disk.opened:
                outbox.close()


# -- a full disk ------------------------------------------------------------------------

def test_a_full_database_raises_outbox_full_with_sqlites_message_not_a_rollback_error(path):
    """SQLite rolls the transaction back itself on SQLITE_FULL; the outbox must say
    what happened, not "cannot rollback - no transaction is active"."""
    outbox = Outbox(path)
    outbox.append(rows(1, 2))
    db = outbox._db()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(OutboxFull) as raised:
        outbox.append(rows(3, body=BIG))
    assert raised.value.reason == "database or disk is full"
    assert raised.value.path == path
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert not db.in_transaction
    assert seqs(outbox) == [1, 2]  # what was written stays
    db.execute(f"PRAGMA max_page_count={pages * 100}")
    outbox.append(rows(3, body=BIG))  # and the outbox works again, on the same connection
    assert seqs(outbox) == [1, 2, 3]


def test_on_a_real_full_filesystem_rows_stay_and_writes_resume_once_there_is_space(full_disk):
    outbox = full_disk.open()
    outbox.append(rows(1, 2))
    full_disk.fill()
    for seq in range(3, 40):  # the WAL file's free pages are used first, then none is left
        try:
            outbox.append(rows(seq, body=BIG))
        except OutboxFull as exc:
            assert exc.reason == "database or disk is full"
            break
    else:
        pytest.fail("the full disk took every append")
    with pytest.raises(OutboxFull):
        outbox.probe()
    written = seqs(outbox)
    assert written[:2] == [1, 2] and written == list(range(1, seq))

    full_disk.free()
    outbox.probe()
    outbox.append(rows(seq))
    assert seqs(outbox) == list(range(1, seq + 1))


def test_a_refused_delete_is_held_uncounted_and_done_by_the_checkpointer(full_disk):
    outbox = full_disk.open(auto_checkpoint=False)
    outbox.append(rows(*range(1, 6), body=BIG))
    [first, second, *rest] = [r.id for r in outbox.fetch_after(0, 10)]
    full_disk.fill()
    for _ in range(40):  # the WAL file's free pages are used first
        try:
            outbox.probe()
        except OutboxFull:
            break
    with pytest.raises(OutboxFull):
        outbox.delete([first, second])
    held = outbox.held()
    assert (held.rows, held.reason) == (2, "database or disk is full")
    assert outbox.pending() == 5
    count, _ = outbox.depth()
    assert count == 3  # confirmed rows do not wait for anything

    checkpointer = Checkpointer(outbox)
    checkpointer.round(now=100.0)
    assert checkpointer.failing_since == 100.0 and outbox.held().rows == 2

    full_disk.free()
    checkpointer.round(now=101.0)
    assert checkpointer.failing_since is None
    assert outbox.held() is None
    assert [r.id for r in outbox.fetch_after(0, 10)] == rest


def test_a_later_delete_takes_the_held_ids_along(path):
    outbox = Outbox(path)
    outbox.append(rows(1, 2, 3))
    ids = [r.id for r in outbox.fetch_after(0, 10)]
    db = outbox._db()
    original = outbox._transaction

    def refusing():
        raise OutboxFull(path, "database or disk is full")
    outbox._transaction = refusing
    with pytest.raises(OutboxFull):
        outbox.delete(ids[:1])
    outbox._transaction = original
    outbox.delete(ids[1:2])
    assert outbox.held() is None
    assert seqs(outbox) == [3]
    assert not db.in_transaction


@pytest.mark.parametrize("code, message, kind", [
    (13, "database or disk is full", OutboxFull),
    (10 | (3 << 8), "disk I/O error", OutboxUnwritable),  # SQLITE_IOERR_WRITE
    (8, "attempt to write a readonly database", OutboxUnwritable),
    (11, "database disk image is malformed", OutboxCorrupt),
    (26, "file is not a database", OutboxCorrupt),
    (1, "no such table: outbox", None),  # a defect: raised as it is
    (None, "database or disk is full", OutboxFull),  # no code: by the message
    (None, "disk I/O error", OutboxUnwritable),
    (None, "something else", None),
])
def test_sqlite_errors_map_to_the_agents(code, message, kind):
    exc = sqlite3.OperationalError(message)
    if code is not None:
        exc.sqlite_errorcode = code
    mapped = outbox_error(exc, "/p/outbox.sqlite")
    if kind is None:
        assert mapped is None
    else:
        assert type(mapped) is kind and mapped.reason == message


# -- a corrupt outbox ---------------------------------------------------------------------

def aside_files(path: str) -> list[str]:
    directory, name = os.path.split(path)
    return sorted(f for f in os.listdir(directory) if f.startswith(name + ".corrupt-"))


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_new_state_starts(path, caplog):
    os.makedirs(os.path.dirname(path))
    garbage = b"this is not an outbox\n" * 500
    with open(path, "wb") as f:
        f.write(garbage)
    with open(path + "-wal", "wb") as f:
        f.write(b"nor is this a WAL")
    caplog.set_level(logging.CRITICAL, logger="lifecycle_publisher.outbox")
    outbox = Outbox(path)
    epoch = outbox.open_epoch(now=1_800_000_000.0)
    assert epoch.fresh and epoch.next_seq == 1
    aside, *companions = aside_files(path)
    assert aside.endswith("Z") and aside + "-wal" in companions  # the -shm too, if any
    assert set(companions) <= {aside + "-wal", aside + "-shm"}
    with open(os.path.join(os.path.dirname(path), aside + "-wal"), "rb") as f:
        assert f.read() == b"nor is this a WAL"
    with open(os.path.join(os.path.dirname(path), aside), "rb") as f:
        assert f.read() == garbage
    [record] = caplog.records
    assert record.levelno == logging.CRITICAL
    assert "file is not a database" in record.message and aside in record.message
    assert "an unknown number of rows" in record.message
    assert "a new state starts" in record.message
    outbox.append([(1, "instance.started", b"b")])
    assert outbox.pending() == 1


def test_a_malformed_database_is_moved_aside_saying_how_many_rows_it_held(path, caplog):
    outbox = Outbox(path)
    outbox.open_epoch(now=1_800_000_000.0)
    outbox.append(rows(*range(1, 301), body=b"y" * 500))
    outbox.checkpoint()
    outbox.close()
    with open(path, "r+b") as f:  # pages of the outbox table's b-tree overwritten
        f.seek(4096 * 6)
        f.write(b"\xff" * 4096 * 4)
    caplog.set_level(logging.CRITICAL, logger="lifecycle_publisher.outbox")
    again = Outbox(path)
    assert again.pending() == 0
    assert again.open_epoch(now=1_800_000_100.0).fresh
    assert len([f for f in aside_files(path) if not f.endswith(("-wal", "-shm"))]) == 1
    assert "is corrupt" in caplog.text and "a new state starts" in caplog.text


def test_an_outbox_left_by_a_crash_is_sound_and_kept_with_its_wal(path, caplog):
    """A process killed with rows only in the WAL (and a stale -shm, as after a
    reboot): the check reads it as it is, moves nothing, and every row is there."""
    import subprocess
    import sys
    code = ("import os, sys; from lifecycle_publisher.outbox import Outbox; "
            "o = Outbox(sys.argv[1], auto_checkpoint=False); "
            "o.append([(s, 'instance.started', b'b' * 500) for s in range(1, 101)]); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60)
    assert os.path.getsize(path + "-wal") > 0
    with open(path + "-shm", "r+b") as f:
        f.write(b"\0" * os.path.getsize(path + "-shm"))
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.outbox")
    assert seqs(Outbox(path)) == list(range(1, 101))
    assert aside_files(path) == [] and "corrupt" not in caplog.text


def test_a_sound_outbox_is_left_where_it_is(path, caplog):
    outbox = Outbox(path)
    outbox.append(rows(1))
    outbox.close()
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.outbox")
    assert seqs(Outbox(path)) == [1]
    assert aside_files(path) == [] and caplog.text == ""


# -- permissions ------------------------------------------------------------------------

def mode(name: str) -> int:
    return stat.S_IMODE(os.stat(name).st_mode)


def test_a_new_state_is_readable_by_its_owner_only(path):
    old = os.umask(0o022)
    try:
        outbox = Outbox(path)
        outbox.append(rows(1))
    finally:
        os.umask(old)
    assert mode(os.path.dirname(path)) == 0o700
    for name in (path, path + "-wal", path + "-shm"):
        assert os.path.exists(name) and mode(name) == 0o600, name
    outbox.close()


def test_an_outbox_readable_by_others_is_made_private_at_open(path, caplog):
    outbox = Outbox(path)
    outbox.append(rows(1))
    outbox.close()
    os.chmod(path, 0o644)
    caplog.set_level(logging.INFO, logger="lifecycle_publisher.outbox")
    assert seqs(Outbox(path)) == [1]
    assert mode(path) == 0o600
    assert f"outbox file {path} was mode 0644: made 0600" in caplog.text
