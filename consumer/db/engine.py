"""Engines for the three supported backends, and what their errors mean."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc

from lifecycle_common import timeutil


def create(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so that
    lifecycle-manage can read while the consumer writes."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa_event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below decide

        @sa_event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options = {}
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        # A batch's UPDATEs of many instance rows in a few round trips (execute_batch)
        # rather than one round trip per row.
        options.update(executemany_mode="values_plus_batch", executemany_batch_page_size=500)
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, **options)


def is_unavailable(exc: sa_exc.DBAPIError) -> bool:
    """True when the error says the database is unreachable rather than that the batch
    is wrong: the batch should wait and be tried again, not be dead-lettered."""
    return bool(exc.connection_invalidated) or isinstance(
        exc, (sa_exc.OperationalError, sa_exc.InterfaceError))


# Deadlocks and serialization failures: the transaction lost a race with another one
# (competing consumers) and succeeds when tried again. PostgreSQL SQLSTATEs, MySQL errnos.
_CONFLICT_SQLSTATES = {"40001", "40P01"}
_CONFLICT_MYSQL_ERRNOS = {1213, 1205}  # deadlock, lock wait timeout


def is_conflict(exc: sa_exc.DBAPIError) -> bool:
    """True when the error says the transaction conflicted with a concurrent one and
    should simply be retried (a deadlock or a serialization failure)."""
    orig = exc.orig
    if getattr(orig, "pgcode", None) in _CONFLICT_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    return bool(args) and args[0] in _CONFLICT_MYSQL_ERRNOS and "mysql" in type(orig).__module__


def naive_utc(moment):
    """Datetimes are stored naive, in UTC, on every backend."""
    return moment.astimezone(timeutil.UTC).replace(tzinfo=None)


def aware(moment):
    return None if moment is None else moment.replace(tzinfo=timeutil.UTC)
