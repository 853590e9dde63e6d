"""The agent's durable outbox: SQLite in WAL mode.

Every event is written here before anything else is done with it, and removed only
once the broker has confirmed it; what the outbox holds survives a crash of the agent
and a broker outage. The outbox also keeps the agent's epoch and the last sequence
number it assigned, so that the per-host sequence survives restarts.

Each thread gets its own SQLite connection (the writer appends, the publisher reads
and deletes); WAL lets reads go on beside a write. Write transactions take a lock of
this process first: SQLite's own wait for a busy database sleeps 1 ms and more per try,
which would add milliseconds to an event whenever the writer's append met the
publisher's delete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time

LOG = logging.getLogger(__name__)

_SCHEMA = """
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
"""


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    id: int
    seq: int
    event_type: str
    body: bytes


@dataclasses.dataclass(frozen=True)
class Epoch:
    epoch: int
    next_seq: int


class Outbox:
    # Seconds SQLite waits for another process holding the database (a second agent
    # started on the same state_path by mistake); threads of this one never wait on it.
    busy_timeout = 30.0
    # WAL pages (4 KB each) past which a checkpoint holds writes back to catch up.
    wal_restart_pages = 4096

    def __init__(self, path: str, synchronous: str = "NORMAL", auto_checkpoint: bool = True):
        """``auto_checkpoint`` False: commits never copy the WAL into the database file
        (SQLite's automatic checkpoint, which syncs the file, in whichever commit
        passes 1,000 WAL pages); the owner runs ``checkpoint`` instead, off the event
        path (see ``Checkpointer``)."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = path
        self._synchronous = synchronous
        self._auto_checkpoint = auto_checkpoint
        self._local = threading.local()
        self._write_lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            if not self._auto_checkpoint:
                db.execute("PRAGMA wal_autocheckpoint=0")
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def open_epoch(self, now: float | None = None) -> Epoch:
        """Start a new epoch: greater than every earlier one (and than the clock in
        seconds, so that a lost state directory still yields a greater epoch), with the
        sequence going on after the last number ever assigned here."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            epoch = max(meta.get("epoch", 0) + 1, int(now))
            (max_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
            last_seq = max(meta.get("last_seq", 0), max_seq)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return Epoch(epoch=epoch, next_seq=last_seq + 1)

    def append(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Durably add ``(seq, event_type, body)`` rows in one transaction."""
        if not rows:
            return
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO outbox (seq, event_type, body, created_at) VALUES (?, ?, ?, ?)",
                [(seq, event_type, body, now) for seq, event_type, body in rows])
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                (max(seq for seq, _, _ in rows),))

    def fetch_after(self, cursor: int, limit: int) -> list[OutboxRow]:
        """Rows written after row ``cursor``, in the order they were written."""
        return [OutboxRow(*r) for r in self._db().execute(
            "SELECT id, seq, event_type, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, limit))]

    def fetch_ids(self, ids: list[int]) -> list[OutboxRow]:
        found = []
        for chunk in _chunks(sorted(ids), 500):
            marks = ",".join("?" * len(chunk))
            found += [OutboxRow(*r) for r in self._db().execute(
                f"SELECT id, seq, event_type, body FROM outbox WHERE id IN ({marks}) ORDER BY id",
                chunk)]
        return found

    def delete(self, ids: list[int]) -> None:
        """Forget confirmed rows."""
        if not ids:
            return
        with self._transaction() as db:
            for chunk in _chunks(ids, 500):
                db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)

    @contextlib.contextmanager
    def _transaction(self):
        """A write transaction of this thread's connection, one thread at a time."""
        db = self._db()
        with self._write_lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def checkpoint(self) -> tuple[int, int]:
        """Copy the WAL into the database file and sync it, as far as no reader stops
        it, while this process's writers go on (a passive checkpoint). SQLite starts
        the WAL over only when a write begins with all of it copied; writes that
        never pause would let it grow without end, so once it holds
        ``wal_restart_pages`` the pages added meanwhile are copied with writes held
        for the moment it takes. Returns the WAL's pages and how many of them are
        checkpointed. (When the last connection closes, SQLite checkpoints the rest
        and removes the WAL file.)

        A passive checkpoint that meets a writer starting the WAL over is told busy
        and copies nothing (SQLite answers -1, -1); with writes held it cannot be, so
        that case is tried again the same way."""
        db = self._db()
        busy, pages, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy or pages >= self.wal_restart_pages:
            with self._write_lock:
                busy, pages, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return pages, done

    def pending(self) -> int:
        (count,) = self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return count

    def depth(self) -> tuple[int, float | None]:
        """How many rows wait and when the oldest was written (None: none waits), read
        on a connection of its own, closed after: for a scrape or a health check, from
        threads that come and go (the read sees the last commit; it never blocks one)."""
        db = sqlite3.connect(self.path, timeout=1.0)
        try:
            (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            oldest = db.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        finally:
            db.close()
        return count, (oldest[0] if oldest else None)


class Checkpointer:
    """Checkpoints the outbox every ``interval`` seconds on a thread of its own, so
    that commits of the writer and the publisher do not copy the WAL and sync the
    database file themselves. With 20 agents on one machine, SQLite's own checkpoints
    (every 1,000 WAL pages, in the committing thread) met every five seconds and held
    the events of the moment back by up to 100 ms; here writes wait only for the
    last few pages (see ``Outbox.checkpoint``)."""

    def __init__(self, outbox: Outbox, interval: float = 1.0):
        self._outbox = outbox
        self._interval = interval
        self._stop = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    self._outbox.checkpoint()
                except sqlite3.Error as exc:  # e.g. a disk error: the WAL keeps the rows
                    LOG.warning("outbox checkpoint failed: %s", exc)
        finally:
            self._outbox.close()

    def stop(self) -> None:
        self._stop.set()


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
