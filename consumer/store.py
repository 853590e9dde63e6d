"""Applies batches of notifications to the database, one transaction per batch.

A batch is committed whole or not at all. Messages already in the journal are
skipped, and ``apply_rules`` decides every change, so a batch can be applied twice,
or by two consumers at once, with the effect of once. A conflict between competing
consumers (both inserting the same new row) rolls the batch back and retries it.

The store only reads and writes rows; ``fold`` decides what a batch writes. On
PostgreSQL a batch goes through ``db.postgresql_pipeline`` (psycopg 3, two round trips),
elsewhere through ``db.portable`` (SQLAlchemy Core); both keep one contract.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from lifecycle_common import timeutil
from lifecycle_common.wire import Notification
from consumer import fold
from consumer.db import failures
from consumer.db import engine as db_engine
from consumer.db.failures import Failure
from consumer.db.portable import PortableTransaction
from consumer.db.tables import faults, hosts, journal
from consumer.errors import BatchRejected, DatabaseUnavailable
from consumer.fold import BatchResult

__all__ = ["BatchResult", "Store"]

LOG = logging.getLogger(__name__)

_CONFLICT_RETRIES = 5
_CHUNK = 500


class Store:
    def __init__(self, engine: sa.Engine, pipelined: bool = True):
        """``pipelined``: on PostgreSQL, apply batches through ``db.postgresql_pipeline``
        (False: through SQLAlchemy Core, as on the other backends)."""
        self.engine = engine
        self._pipelined = None
        params = db_engine.libpq_params(engine) if pipelined else None
        if params is not None:
            from consumer.db import postgresql_pipeline
            if postgresql_pipeline.supported():
                self._pipelined = postgresql_pipeline.PipelinedConnection(params)
                # Closed with the engine's pool, whoever disposes of it.
                sa.event.listen(engine, "engine_disposed",
                                lambda _engine: self._pipelined.close())
            else:
                LOG.warning("this libpq has no pipeline mode (libpq 14 or later has): "
                            "batches go through SQLAlchemy Core")

    def apply_batch(self, notes: list[Notification]) -> BatchResult:
        """Apply ``notes`` in one transaction. Raises DatabaseUnavailable (hold the
        batch and retry later: nothing was applied) or BatchRejected (the database
        refuses the content, and still answers); anything else a hostile batch makes
        the code below raise propagates as it is, and the batch is not applied."""
        batch = fold.Batch(notes)
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            try:
                with self._transaction() as tx:
                    return _apply(tx, batch, timeutil.utcnow(),
                                  read_journal=self._reads_journal_first(attempt))
            except sa_exc.DBAPIError as exc:
                failure = failures.classify(exc)
                if failures.discard_pool(exc):
                    self._discard_pool(exc)
                raced = failure is Failure.CONFLICT or isinstance(exc, sa_exc.IntegrityError)
                if attempt == 1 and self._pipelined is not None and (
                        isinstance(exc, sa_exc.IntegrityError) or exc.connection_invalidated):
                    # The first attempt read no journal: a key it holds is a duplicate
                    # key. Or the kept connection had gone while idle (what a pool's
                    # pre-ping would have caught); if the COMMIT was what it lost, the
                    # journal now holds the batch and the next attempt skips it.
                    LOG.debug("batch of %d applied again, reading the journal, after: %s",
                              len(notes), _first_line(exc.orig))
                    continue
                if raced and attempt < _CONFLICT_RETRIES:
                    LOG.info("batch of %d conflicted with another consumer (%s); retry %d",
                             len(notes), exc.orig, attempt)
                    time.sleep(0.01 * attempt)
                    continue
                if failure is not Failure.REFUSED:  # unreachable, or still losing races
                    raise DatabaseUnavailable(_first_line(exc.orig)) from exc
                if not self.database_answers():
                    raise DatabaseUnavailable(
                        f"{_first_line(exc.orig)} (and the database does not answer)") from exc
                raise BatchRejected(_first_line(exc.orig)) from exc
            except sa_exc.TimeoutError as exc:  # no pooled connection came free
                raise DatabaseUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    def _reads_journal_first(self, attempt: int) -> bool:
        """Whether this attempt reads which of the batch's keys the journal holds before
        it folds. The pipeline's first attempt does not: it folds as if the journal held
        none, and if it holds one (a redelivery, which is rare) the journal's primary key
        refuses the whole transaction and the next attempt reads. Measured as in
        ``db.postgresql_pipeline``: reading first costs the server 8.5 us more per event
        (28.7 against 20.2) and the batch a round trip."""
        return attempt > 1 or self._pipelined is None

    @contextlib.contextmanager
    def _transaction(self):
        """A transaction with the contract of ``portable.PortableTransaction``."""
        if self._pipelined is not None:
            with self._pipelined.transaction() as tx:
                yield tx
        else:
            with self.engine.begin() as conn:
                yield PortableTransaction(conn)

    def database_answers(self) -> bool:
        """Whether the database answers a trivial query on a connection of its own: an
        error the classification does not know is refused only while it does."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except (sa_exc.SQLAlchemyError, OSError) as exc:
            LOG.warning("the database does not answer: %s", exc)
            return False

    def prune_journal(self, older_than: float, limit: int = 10000) -> int:
        """Delete up to ``limit`` journal rows applied more than ``older_than`` seconds
        ago, and the ``faults`` rows of the same notifications (the faults' history is
        kept as long as the journal, and a fault's row never outlives its journal row:
        a redelivery the journal no longer knows is a fault to record, and count,
        again, not half of one). Return how many journal rows. Redeliveries older than
        that are still kept from moving an instance backwards by the (epoch, seq) rule;
        they just are no longer counted as duplicates."""
        cutoff = db_engine.naive_utc(timeutil.utcnow() - datetime.timedelta(seconds=older_than))
        try:
            with self.engine.begin() as conn:
                keys = conn.execute(
                    sa.select(journal.c.host, journal.c.epoch, journal.c.seq)
                    .where(journal.c.applied_at < cutoff).limit(limit)).all()
                for host, epoch, seqs in _group_keys(keys):
                    for table in (faults, journal):
                        conn.execute(table.delete().where(
                            table.c.host == host, table.c.epoch == epoch,
                            table.c.seq.in_(seqs)))
        except sa_exc.DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return len(keys)

    def count_hosts(self) -> dict[str, int]:
        """How many hosts are up and how many down."""
        try:
            with self.engine.connect() as conn:
                counts = dict(conn.execute(
                    sa.select(hosts.c.status, sa.func.count()).group_by(hosts.c.status)).all())
        except sa_exc.DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return {"up": counts.get("up", 0), "down": counts.get("down", 0)}

    def mark_silent_hosts_down(self, down_after: float) -> list[str]:
        """Mark ``down`` every host whose last heartbeat is older than ``down_after``."""
        now = timeutil.utcnow()
        cutoff = db_engine.naive_utc(now - datetime.timedelta(seconds=down_after))
        last_seen = sa.func.coalesce(hosts.c.last_heartbeat_at, hosts.c.updated_at)
        try:
            with self.engine.begin() as conn:
                names = [r.name for r in conn.execute(
                    sa.select(hosts.c.name).where(hosts.c.status == "up", last_seen < cutoff))]
                if names:
                    conn.execute(hosts.update().where(hosts.c.name.in_(names))
                                 .values(status="down", updated_at=db_engine.naive_utc(now)))
        except sa_exc.DBAPIError as exc:
            raise self._unavailable(exc) from exc
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return names

    def _unavailable(self, exc: sa_exc.DBAPIError) -> DatabaseUnavailable:
        """What ``exc`` means to the maintenance and liveness queries: the database is
        unavailable; the pool replaced first where ``exc`` says so."""
        if failures.discard_pool(exc):
            self._discard_pool(exc)
        return DatabaseUnavailable(_first_line(exc.orig))

    def _discard_pool(self, exc: sa_exc.DBAPIError) -> None:
        """Replace every pooled connection: the server said it is read-only (an old
        primary after a failover) or a connection was lost, and a pre-ping would not
        tell (a read-only server answers it). New ones go through the URL's host list
        (target_session_attrs=read-write)."""
        LOG.warning("replacing the database connections after: %s", _first_line(exc.orig))
        self.engine.dispose()  # and, through engine_disposed, the pipelined connection


def _apply(tx, batch: fold.Batch, now: datetime.datetime, read_journal: bool) -> BatchResult:
    """Read what ``fold`` needs, fold, write. Without ``read_journal`` the batch is
    folded as if the journal held none of its keys: if it holds one, writing the
    journal fails (a duplicate key) and the whole transaction with it."""
    journaled = tx.journaled(batch.keys) if read_journal else set()
    fresh = batch.fresh(journaled)
    uuids, inventory_hosts = fold.instances_to_load(fresh)
    rows, host_rows = tx.load(uuids, inventory_hosts, batch.host_names(fresh))
    words = tx.last_words(fold.words_wanted(fresh, rows))
    writes = fold.fold(batch, journaled, rows, words, host_rows, now)
    tx.write(writes)
    return writes.result


def _first_line(error: BaseException) -> str:
    """A driver's message without the SQL and parameters some drivers append."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _group_keys(keys):
    groups: dict[tuple[str, int], list[int]] = {}
    for host, epoch, seq in keys:
        groups.setdefault((host, epoch), []).append(seq)
    for (host, epoch), seqs in groups.items():
        for chunk in _chunks(seqs):
            yield host, epoch, chunk


def _chunks(items: list):
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]
