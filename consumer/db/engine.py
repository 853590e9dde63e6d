"""Engines for the three supported backends (``failures`` says what their errors mean)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import event as sa_event

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


def naive_utc(moment):
    """Datetimes are stored naive, in UTC, on every backend."""
    return moment.astimezone(timeutil.UTC).replace(tzinfo=None)


def aware(moment):
    return None if moment is None else moment.replace(tzinfo=timeutil.UTC)
