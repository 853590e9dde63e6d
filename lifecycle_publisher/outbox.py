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

Disk errors are mapped here, at the boundary, into the agent's errors: a full disk is
OutboxFull (an OutboxUnwritable), with SQLite's own message; a file that is not a
database, or a malformed one, is OutboxCorrupt. What the outbox held before a full disk
stays in it; a delete of confirmed rows that the disk refuses is held and done later.
At open, a corrupt outbox is moved aside (``outbox.sqlite.corrupt-<UTC time>``) and a new
state starts. The state directory is created 0700 and the outbox 0600 (SQLite gives its
-wal and -shm files the database file's mode): the events of a host's guests are
nobody else's business.

Rows are keyed by an ``id`` that this outbox assigns in commit order (``Outbox.append``),
not by SQLite (AUTOINCREMENT) and not by the event's ``seq``: the publisher reads on
from the last id it saw (``fetch_after``), so a row committed later must have a larger
id, and sequence numbers are not committed in their order (an inventory takes its
number before listing the domains, while events go on being written; a held STOPPED
event is written after later ones). The highest id and seq ever written are recorded
in ``meta`` by the transaction that deletes rows (``delete``), not by every append:
a write transaction then changes one page of the table, not three. A one-row append
took 36 µs of CPU with the first schema, 21 µs now; 64 rows 5.4 µs a row, now 4.3
(``python -m benchmarks.micro_agent outbox``, on this project's 2-core VM, ext4). An
outbox of the first schema (AUTOINCREMENT ids) is migrated when it is opened
(``_migrate_from_autoincrement``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import threading
import time
import urllib.request
from typing import Iterator, Optional

from lifecycle_publisher.errors import (OutboxCorrupt, OutboxError, OutboxFull,
                                        OutboxUnwritable)
from lifecycle_publisher.outbox_outage import Space, Throttle

LOG = logging.getLogger(__name__)

FILE_NAME = "outbox.sqlite"
_FILE_MODE = 0o600
_DIRECTORY_MODE = 0o700
_COMPANIONS = ("-wal", "-shm")  # SQLite's files beside the database, named after it

# PRAGMA user_version of this schema. 0: the first one, whose outbox table had an
# AUTOINCREMENT id and whose appends recorded meta.last_seq.
SCHEMA_VERSION = 2

_OUTBOX_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
)"""
_OTHER_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS identity (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
# The highest of an existing value and the one given (the two high marks only grow).
_RAISE_META = ("INSERT INTO meta (key, value) VALUES (?, ?) "
               "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)")


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    id: int
    seq: int
    event_type: str
    body: bytes


@dataclasses.dataclass(frozen=True)
class Held:
    """Confirmed rows whose delete the disk refused: deleted later."""
    rows: int
    since: float  # monotonic seconds: the first refused delete
    reason: str


@dataclasses.dataclass(frozen=True)
class Epoch:
    epoch: int
    next_seq: int
    fresh: bool = False  # the state had no epoch: this one came from the clock


class HostMismatch(Exception):
    """The outbox belongs to another host name than the one the agent was given."""

    def __init__(self, recorded: str, given: str, pending: int):
        self.recorded, self.given, self.pending = recorded, given, pending
        super().__init__(f"the state belongs to host {recorded!r}, not {given!r}")


class Outbox:
    # Seconds SQLite waits for another process holding the database (a second agent
    # started on the same state_path by mistake); threads of this one never wait on it.
    busy_timeout = 30.0
    # WAL pages (4 KB each) past which a checkpoint holds writes back to catch up.
    wal_restart_pages = 4096

    def __init__(self, path: str, synchronous: str = "NORMAL", auto_checkpoint: bool = True):
        """Open (or create) the outbox at ``path``: the directory 0700 if it is created,
        the file 0600 (an existing one readable by others is made 0600), then checked
        (``check_or_move_aside``). Raises OutboxUnwritable when the disk refuses.

        ``auto_checkpoint`` False: commits never copy the WAL into the database file
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
        self._held_lock = threading.Lock()
        self._held_ids: set[int] = set()
        self._held: Optional[Held] = None
        # The id the next appended row takes; None: read from the file at the next
        # append. Only read or changed with _write_lock held, inside a transaction.
        self._next_id: Optional[int] = None
        _create_private(path)
        check_or_move_aside(path)
        self._prepare_schema()

    @contextlib.contextmanager
    def _errors_mapped(self) -> Iterator[None]:
        """SQLite's disk and corruption errors raised as the agent's (OutboxError);
        any other error as it is."""
        try:
            yield
        except sqlite3.Error as exc:
            mapped = outbox_error(exc, self.path)
            if mapped is None:
                raise
            raise mapped from exc

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self._synchronous}")
                if not self._auto_checkpoint:
                    db.execute("PRAGMA wal_autocheckpoint=0")
            except BaseException:
                db.close()
                raise
            self._local.db = db
        return db

    def _prepare_schema(self) -> None:
        """Create the tables of a new outbox, or migrate one of the first schema; an
        outbox of this schema is only read (no write transaction at every start)."""
        with self._errors_mapped():
            if _schema_of(self._db()) == "current":
                return
        with self._transaction() as db:  # looked at again: another process may be here
            state = _schema_of(db)
            if state == "current":
                return
            for statement in _OTHER_TABLES:
                db.execute(statement)
            if state == "autoincrement":
                _migrate_from_autoincrement(db, self.path)
            else:
                if state == "none":
                    db.execute(_OUTBOX_TABLE.format(name="outbox"))
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def open_epoch(self, now: float | None = None) -> Epoch:
        """Start a new epoch: the previous one plus one, with the sequence going on
        after the last number ever assigned here.

        The epoch is a counter, not a time: a start with a wrong clock changes nothing.
        Only a state without an epoch (the first start, or one whose state directory
        was lost or moved aside) reads the clock, in seconds, so that a host that lost
        its state still starts above the counters of its earlier states as long as the
        clock is right; its sequence starts at 1 again, and the consumer takes such a
        start (an inventory with seq 1) as the host's newest, whatever its epoch, so
        that not even that one reading of a wrong clock can silence the host.

        Why the sequence never goes back within one state: every seq ever committed
        is either in a row of the outbox or was in a row that ``delete`` removed, and
        the transaction that removed it raised ``meta.last_seq`` to at least its seq
        (in the same transaction: both or neither; under the first schema every append
        raised it, and the migration keeps it); ``meta.last_seq`` only ever grows
        (MAX). So ``max(meta.last_seq, MAX(seq) in outbox)`` is at least the highest
        seq ever committed, and the next one starts above it. (A number taken but never
        committed, an event dropped on a full disk, may be taken again by the next
        epoch: (epoch, seq) is still new.)"""
        now = time.time() if now is None else now
        with self._transaction() as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            fresh = "epoch" not in meta
            epoch = max(int(now), 1) if fresh else meta["epoch"] + 1
            (max_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
            last_seq = max(meta.get("last_seq", 0), max_seq)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        return Epoch(epoch=epoch, next_seq=last_seq + 1, fresh=fresh)

    def claim(self, host: str) -> None:
        """Record that this state is ``host``'s, or raise HostMismatch if it is another
        host's: the rows waiting here name their host, and epochs and sequence numbers
        are the host's own, so a state cannot pass from one host name to another."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM identity WHERE key = 'host'").fetchone()
            if row is None:
                db.execute("INSERT INTO identity (key, value) VALUES ('host', ?)", (host,))
                return
            if row[0] != host:
                (pending,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                raise HostMismatch(row[0], host, pending)

    def append(self, rows: list[tuple[int, str, bytes]]) -> Optional[list[int]]:
        """Durably add ``(seq, event_type, body)`` rows in one transaction: all of them,
        or none and OutboxUnwritable (OutboxFull) if the disk refuses. Returns the rows'
        ids (``OutboxRow.id``), in the order given: larger than every id committed
        before, in this process or an earlier one, so that a reader going on from the
        last id it saw (``fetch_after``) never misses a row.

        The ids come from a counter of this Outbox, read from the file at the first
        append (``_first_free_id``): a transaction that also asked SQLite for the next
        id (AUTOINCREMENT) or recorded the last seq wrote two more pages each time.
        Another process writing the same file (a second agent started on the same state
        by mistake) makes an id collide: the counter is read again, once. (Ids that it
        committed and deleted since this counter was read make no collision; their
        numbers are given again, to rows that a publisher whose cursor passed them
        publishes at the next start. The first schema let SQLite count, in the file.)
        After such a collision it returns None instead of the ids: rows the other
        process wrote lie between those of this one, and a publisher sending what was
        just written would pass them by; it reads the outbox instead."""
        if not rows:
            return []
        now = time.time()
        try:
            return self._insert(rows, now)
        except sqlite3.IntegrityError as exc:
            if "outbox.id" not in str(exc):  # not an id another process took first
                raise
            LOG.warning("outbox %s: another process writes to it too; row ids read again",
                        self.path)
            self._next_id = None
            self._insert(rows, now)
            return None

    def _insert(self, rows: list[tuple[int, str, bytes]], now: float) -> list[int]:
        with self._transaction() as db:
            first = self._next_id
            if first is None:
                first = _first_free_id(db)
            ids = list(range(first, first + len(rows)))
            db.executemany(
                "INSERT INTO outbox (id, seq, event_type, body, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(row_id, seq, event_type, body, now)
                 for row_id, (seq, event_type, body) in zip(ids, rows)])
            # Taken whether or not the commit works: an id skipped is harmless, and
            # ids below a committed one are never handed out again.
            self._next_id = first + len(rows)
        return ids

    def probe(self) -> None:
        """A write as small as one can be (a page of the WAL), to learn whether the
        disk takes writes again; OutboxUnwritable while it does not."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probed_at', ?)",
                       (int(time.time()),))

    def fetch_after(self, cursor: int, limit: int) -> list[OutboxRow]:
        """Rows written after row ``cursor``, in the order they were written."""
        with self._errors_mapped():
            return [OutboxRow(*r) for r in self._db().execute(
                "SELECT id, seq, event_type, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit))]

    def fetch_ids(self, ids: list[int]) -> list[OutboxRow]:
        found = []
        with self._errors_mapped():
            for chunk in _chunks(sorted(ids), 500):
                marks = ",".join("?" * len(chunk))
                found += [OutboxRow(*r) for r in self._db().execute(
                    f"SELECT id, seq, event_type, body FROM outbox WHERE id IN ({marks}) "
                    "ORDER BY id", chunk)]
        return found

    def delete(self, ids: list[int]) -> None:
        """Forget confirmed rows, and those of earlier deletes the disk refused.

        If the disk refuses this one too (a full disk: a delete writes to the WAL), the
        ids are held in memory and OutboxUnwritable is raised: the next ``delete`` or
        ``delete_held`` (the Checkpointer's, every second) deletes them, and ``depth``
        does not count them meanwhile (they are confirmed). A crash meanwhile only means
        that their rows are published again, which consumers drop as duplicates (host,
        epoch, seq).

        The same transaction raises ``meta.last_seq`` to the highest seq it deletes and
        ``meta.last_id`` to the highest id, so that neither the sequence (``open_epoch``)
        nor the row ids (``append``) go back once every row is gone: the high marks are
        kept once per delete (every 0.2 s or half a window), not once per append."""
        with self._held_lock:
            ids = sorted(self._held_ids.union(ids))
        if not ids:
            return
        try:
            with self._transaction() as db:
                top_seq = 0
                for where, args in _id_conditions(ids):
                    (seq,) = db.execute(f"SELECT MAX(seq) FROM outbox WHERE {where}",
                                        args).fetchone()
                    top_seq = max(top_seq, seq or 0)
                    db.execute(f"DELETE FROM outbox WHERE {where}", args)
                db.executemany(_RAISE_META, (("last_seq", top_seq), ("last_id", ids[-1])))
        except OutboxUnwritable as exc:
            with self._held_lock:
                self._held_ids.update(ids)
                since = self._held.since if self._held is not None else time.monotonic()
                self._held = Held(rows=len(self._held_ids), since=since, reason=exc.reason)
            raise
        with self._held_lock:
            self._held_ids.difference_update(ids)
            self._held = (None if not self._held_ids else
                          dataclasses.replace(self._held, rows=len(self._held_ids)))

    def delete_held(self) -> int:
        """Delete the rows whose delete the disk refused; returns how many (0: none
        waited). OutboxUnwritable while the disk still refuses."""
        with self._held_lock:
            count = len(self._held_ids)
        if count:
            self.delete([])
        return count

    def held(self) -> Optional[Held]:
        """The confirmed rows waiting to be deleted, or None; from any thread."""
        return self._held

    def _transaction(self) -> _WriteTransaction:
        """A write transaction of this thread's connection, one thread at a time
        (``with self._transaction() as db:``).

        SQLite's errors are mapped (``outbox_error``): a full disk is OutboxFull with
        SQLite's own message. On SQLITE_FULL and some I/O errors SQLite has rolled the
        transaction back itself, so ROLLBACK is sent only while one is open: sent
        anyway, it would raise "cannot rollback - no transaction is active" and hide
        the cause. A ROLLBACK that fails closes the connection (the next use opens a
        new one), so that it is never left inside a transaction."""
        return _WriteTransaction(self)

    def _roll_back(self, db: sqlite3.Connection) -> None:
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            LOG.warning("outbox %s: rollback failed (%s); its connection is closed and "
                        "opened again at the next use", self.path, exc)
            self._local.db = None
            db.close()

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
        that case is tried again the same way. On a full disk (the database file
        cannot grow) it raises OutboxFull; the WAL keeps every row meanwhile."""
        with self._errors_mapped():
            db = self._db()
            busy, pages, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or pages >= self.wal_restart_pages:
                with self._write_lock:
                    busy, pages, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return pages, done

    def pending(self) -> int:
        with self._errors_mapped():
            (count,) = self._db().execute("SELECT COUNT(*) FROM outbox").fetchone()
        return count

    def depth(self) -> tuple[int, float | None]:
        """How many rows wait to be confirmed and when the oldest of them was written
        (None: none waits), read on a connection of its own, closed after: for a scrape
        or a health check, from threads that come and go (the read sees the last
        commit; it never blocks one). Rows confirmed and held for a delete the disk
        refused (``held``) do not wait for anything: they are not counted."""
        with self._held_lock:
            held = frozenset(self._held_ids)
        with self._errors_mapped():
            db = sqlite3.connect(self.path, timeout=1.0)
            try:
                (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                oldest = None
                for row_id, created_at in db.execute(
                        "SELECT id, created_at FROM outbox ORDER BY id"):
                    if row_id not in held:
                        oldest = created_at
                        break
            finally:
                db.close()
        return max(0, count - len(held)), oldest

    def space(self) -> Optional[Space]:
        """The free space of the outbox's filesystem, or None if it cannot be read."""
        return filesystem_space(self.path)


class _WriteTransaction:
    """``Outbox._transaction``: the write lock, BEGIN IMMEDIATE, COMMIT or ROLLBACK,
    SQLite's errors mapped. A class rather than two nested generator-based context
    managers (``contextlib.contextmanager``): an empty transaction cost 10.6 µs with
    them, 6.9 µs with this class, of which BEGIN IMMEDIATE and COMMIT take 5.3 µs (CPU
    time on this project's 2-core VM, timeit). It does what this did:

        with errors_mapped():
            db = outbox._db()
            with outbox._write_lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    outbox._roll_back(db)
                    raise
    """

    __slots__ = ("_outbox", "_db")

    def __init__(self, outbox: Outbox):
        self._outbox = outbox
        self._db: Optional[sqlite3.Connection] = None

    def __enter__(self) -> sqlite3.Connection:
        outbox = self._outbox
        try:
            db = outbox._db()
            outbox._write_lock.acquire()
            try:
                db.execute("BEGIN IMMEDIATE")
            except BaseException:
                outbox._write_lock.release()
                raise
        except sqlite3.Error as exc:
            _raise_mapped(exc, outbox.path)
        self._db = db
        return db

    def __exit__(self, kind, exc, traceback) -> bool:
        outbox, db = self._outbox, self._db
        try:
            if kind is None:
                try:
                    db.execute("COMMIT")
                except BaseException:
                    outbox._roll_back(db)
                    raise
            else:
                outbox._roll_back(db)
        except sqlite3.Error as error:
            _raise_mapped(error, outbox.path)
        finally:
            outbox._write_lock.release()
        mapped = outbox_error(exc, outbox.path) if isinstance(exc, sqlite3.Error) else None
        if mapped is not None:
            raise mapped from exc
        return False  # anything else raised in the block goes on as it is


def _raise_mapped(exc: sqlite3.Error, path: str) -> None:
    """Raise the agent's error for ``exc`` (``outbox_error``), or ``exc`` itself; in
    the ``except`` that caught it."""
    mapped = outbox_error(exc, path)
    if mapped is None:
        raise exc
    raise mapped from exc


class Checkpointer:
    """Checkpoints the outbox every ``interval`` seconds on a thread of its own, so
    that commits of the writer and the publisher do not copy the WAL and sync the
    database file themselves. With 20 agents on one machine, SQLite's own checkpoints
    (every 1,000 WAL pages, in the committing thread) met every five seconds and held
    the events of the moment back by up to 100 ms; here writes wait only for the
    last few pages (see ``Outbox.checkpoint``).

    Each round also deletes the confirmed rows whose delete a full disk refused
    (``Outbox.delete_held``). A disk that refuses is logged at the first failure and
    then at most every ``LOG_INTERVAL`` seconds (it is tried again every round: the
    WAL keeps every row meanwhile), and once when it works again. A corrupt outbox
    ends the thread (OutboxCorrupt), and so the agent, for its next start to move the
    file aside."""

    LOG_INTERVAL = 60.0

    def __init__(self, outbox: Outbox, interval: float = 1.0):
        self._outbox = outbox
        self._interval = interval
        self._stop = threading.Event()
        self._throttle = Throttle(self.LOG_INTERVAL)
        self.failing_since: Optional[float] = None  # monotonic; None: the last round worked

    def run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                self.round(time.monotonic())
        finally:
            self._outbox.close()

    def round(self, now: float) -> None:
        """One round: the held deletes, then the checkpoint."""
        failure = None
        try:
            deleted = self._outbox.delete_held()
            self._outbox.checkpoint()
        except OutboxUnwritable as exc:
            failure = exc.reason
        except sqlite3.Error as exc:  # not a disk error: said the same way
            failure = f"{type(exc).__name__}: {exc}"
        if failure is not None:  # logged outside the except: oslo.log would add the error
            if self.failing_since is None:
                self.failing_since = now
            if self._throttle.due(now):
                held = self._outbox.held()
                LOG.warning("outbox %s: checkpoint failed for %.0fs: %s; the WAL keeps "
                            "every row; %d confirmed rows wait to be deleted; tried again "
                            "every %gs", self._outbox.path, now - self.failing_since,
                            failure, held.rows if held else 0, self._interval)
            return
        if deleted:
            LOG.info("outbox %s: %d confirmed rows deleted, whose delete the disk had "
                     "refused", self._outbox.path, deleted)
        if self.failing_since is not None:
            LOG.info("outbox %s: checkpoints work again after %.0fs", self._outbox.path,
                     now - self.failing_since)
            self.failing_since = None
            self._throttle.reset()

    def stop(self) -> None:
        self._stop.set()


def _schema_of(db: sqlite3.Connection) -> str:
    """Which schema the outbox file holds: "none" (a new file), "autoincrement" (the
    first schema), "current", or "partial" (this schema's outbox table, a table or the
    version mark missing: completed in place)."""
    tables = dict(db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
        "AND name IN ('outbox', 'meta', 'identity')"))
    outbox = tables.get("outbox")
    if outbox is None:
        return "none"
    if "AUTOINCREMENT" in outbox.upper():
        return "autoincrement"
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return "current" if len(tables) == 3 and version == SCHEMA_VERSION else "partial"


def _migrate_from_autoincrement(db: sqlite3.Connection, path: str) -> None:
    """Migrate, inside the caller's transaction, an outbox of the first schema
    (``id INTEGER PRIMARY KEY AUTOINCREMENT``): every row is copied with its id, so
    their order and what a publisher reads stay as they were; the highest id SQLite
    ever gave (``sqlite_sequence``, above the rows' when the last rows were deleted)
    becomes ``meta.last_id``, so that no id is given twice; ``meta`` (epoch, last_seq)
    and ``identity`` stay as they are. A disk that refuses rolls all of it back: the
    next start tries again on the file as it was."""
    db.execute(_OUTBOX_TABLE.format(name="outbox_migrated"))
    copied = db.execute(
        "INSERT INTO outbox_migrated (id, seq, event_type, body, created_at) "
        "SELECT id, seq, event_type, body, created_at FROM outbox ORDER BY id").rowcount
    (given,) = db.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    (top_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
    db.executemany(_RAISE_META, (("last_id", given), ("last_seq", top_seq)))
    db.execute("DROP TABLE outbox")  # (its sqlite_sequence row goes with it)
    db.execute("ALTER TABLE outbox_migrated RENAME TO outbox")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    LOG.info("outbox %s: migrated to schema %d (row ids assigned by the agent, the high "
             "marks kept by deletes); %d rows waiting to be published kept, in order",
             path, SCHEMA_VERSION, copied)


def _first_free_id(db: sqlite3.Connection) -> int:
    """The id above every id this outbox has ever given: its rows' and those deleted
    (``meta.last_id``, kept by ``delete``)."""
    (top,) = db.execute(
        "SELECT MAX(COALESCE((SELECT MAX(id) FROM outbox), 0), "
        "COALESCE((SELECT value FROM meta WHERE key = 'last_id'), 0))").fetchone()
    return top + 1


def outbox_path(state_path: str) -> str:
    return os.path.join(state_path, FILE_NAME)


def filesystem_space(path: str) -> Optional[Space]:
    """The space of the filesystem that holds (or would hold) ``path``; None if it
    cannot be read."""
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserve
    return Space(free=free * st.f_frsize, total=st.f_blocks * st.f_frsize)


# SQLite's primary result codes (an extended code's low byte), https://sqlite.org/rescode.html
_SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26
_BY_MESSAGE = (("database or disk is full", OutboxFull), ("disk i/o error", OutboxUnwritable),
               ("malformed", OutboxCorrupt), ("file is not a database", OutboxCorrupt))


def outbox_error(exc: sqlite3.Error, path: str) -> Optional[OutboxError]:
    """The agent's error for one of SQLite's: OutboxFull for a full disk,
    OutboxUnwritable for a filesystem that refuses otherwise (an I/O error, read-only,
    a file that cannot be opened), OutboxCorrupt for a file that is not a database or
    a malformed one; None for any other (a defect: raised as it is). By SQLite's result
    code, or by its message where there is none."""
    reason = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        kind = {_SQLITE_FULL: OutboxFull, _SQLITE_IOERR: OutboxUnwritable,
                _SQLITE_READONLY: OutboxUnwritable, _SQLITE_CANTOPEN: OutboxUnwritable,
                _SQLITE_CORRUPT: OutboxCorrupt, _SQLITE_NOTADB: OutboxCorrupt}.get(code & 0xFF)
        return kind(path, reason) if kind is not None else None
    for text, kind in _BY_MESSAGE:
        if text in reason.lower():
            return kind(path, reason)
    return None


def _os_error(exc: OSError, path: str) -> OutboxError:
    kind = OutboxFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else OutboxUnwritable
    return kind(path, f"{exc.strerror or exc} ({exc.filename or path})")


def _create_private(path: str) -> None:
    """The state directory (0700 when created here) and the outbox file, created 0600
    before SQLite opens it: SQLite creates the -wal and -shm files with the database
    file's mode. An existing file readable or writable by others is made 0600."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=_DIRECTORY_MODE, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE))
        for name in (path, *(path + suffix for suffix in _COMPANIONS)):
            _tighten(name)
    except OSError as exc:
        raise _os_error(exc, path) from exc


def _tighten(name: str) -> None:
    try:
        mode = os.stat(name).st_mode & 0o777
    except FileNotFoundError:
        return
    if mode & 0o077:
        os.chmod(name, _FILE_MODE)
        LOG.info("outbox file %s was mode %04o: made %04o (it holds the host's events)",
                 name, mode, _FILE_MODE)


def check_or_move_aside(path: str) -> None:
    """Check the outbox with ``PRAGMA quick_check``; if it is not a database or a
    malformed one, move it aside (``move_aside``), so that the agent starts a new state
    rather than failing at every start.

    quick_check reads every page of the file (it checks the b-trees, not that indexes
    match their tables). Measured on this project's machines, an outbox of 10,000
    event rows (780-byte bodies, a 10 MB file): 4.5 ms with the file in the page cache,
    155 ms with it dropped from the cache (read from the virtio disk), once per start;
    an outbox of a few rows, as it normally is, 0.15 ms. The check's connection is
    read-only: closing it must not checkpoint or delete the WAL of a file about to be
    moved aside (one left by a crash is read as it is). Raises OutboxUnwritable if the
    disk refuses."""
    try:
        # Read-only: closing it must not checkpoint a WAL into, or delete it beside, a
        # file that may be moved aside (what it holds is kept for inspection).
        db = sqlite3.connect(_read_only(path), uri=True, timeout=Outbox.busy_timeout)
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        mapped = outbox_error(exc, path)
        if not isinstance(mapped, OutboxCorrupt):
            if mapped is None:
                raise
            raise mapped from exc
        problems = [mapped.reason]
    if problems != ["ok"]:
        move_aside(path, "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))


def move_aside(path: str, reason: str, now: Optional[float] = None) -> str:
    """Move a corrupt outbox and its -wal and -shm files aside, to
    ``<path>.corrupt-<UTC time>`` (and its -wal, -shm), with a CRITICAL log saying
    what was moved, how many rows it may have held and that a new state starts (no
    epoch: the next one from the clock, the sequence from 1). Returns the new name.
    The -wal goes first: one left beside a new database would be replayed into it."""
    rows = _count_rows(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    aside = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(aside):
        aside, n = f"{path}.corrupt-{stamp}.{n}", n + 1
    moved = []
    try:
        for suffix in (*_COMPANIONS, ""):
            if os.path.exists(path + suffix):
                os.rename(path + suffix, aside + suffix)
                moved.append(os.path.basename(path + suffix))
    except OSError as exc:
        raise _os_error(exc, path) from exc
    LOG.critical(
        "outbox %s is corrupt (%s): moved aside to %s (%s); it may have held %s rows not "
        "yet published, which this agent will not send (the file is kept for "
        "inspection); a new state starts: a new epoch from the clock and the sequence "
        "from 1, and the first inventory, marked new_state, reconciles the host",
        path, reason, aside, ", ".join(moved) or "nothing", "an unknown number of"
        if rows is None else rows)
    return aside


def _count_rows(path: str) -> Optional[int]:
    """How many rows a (corrupt) outbox holds, if it can still tell."""
    try:
        db = sqlite3.connect(_read_only(path), uri=True, timeout=1.0)
        try:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


def _read_only(path: str) -> str:
    return f"file:{urllib.request.pathname2url(os.path.abspath(path))}?mode=ro"


def _id_conditions(ids: list[int]) -> Iterator[tuple[str, list[int]]]:
    """SQL conditions (and their arguments) that together select the rows of the
    sorted ``ids`` and no other: ``id BETWEEN first AND last`` for each run of
    consecutive ids (the publisher's confirmed rows mostly are one), ``id IN (...)``
    for the ids on their own, 500 at a time. A range is one walk along the table's
    b-tree where a list is a lookup per id: a delete of 64 confirmed rows, with the
    highest seq among them read first, cost 2.6 µs a row with lists, 2.1 µs with a
    range, where the first schema's delete by list, without the read, cost 2.0 (CPU
    time on this project's 2-core VM, timeit; ``test_outbox_schema.py`` checks that a
    delete removes exactly the ids given)."""
    singles: list[int] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end < len(ids) and ids[end] == ids[end - 1] + 1:
            continue
        if end - start >= 2:
            yield "id BETWEEN ? AND ?", [ids[start], ids[end - 1]]
        else:
            singles.append(ids[start])
        start = end
    for chunk in _chunks(singles, 500):
        yield f"id IN ({','.join('?' * len(chunk))})", chunk


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]
