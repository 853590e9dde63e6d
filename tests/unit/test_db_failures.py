"""consumer.db.failures by table: what each backend's error means for a batch, and when
the pool's connections are replaced. The errors are built as the drivers raise them
(psycopg2: its module and ``pgcode``; pymysql: ``args[0]`` the error number; sqlite3:
the message), wrapped as SQLAlchemy wraps them."""

from __future__ import annotations

import sqlite3

import pymysql
import pytest
from sqlalchemy import exc as sa_exc

from consumer.db.failures import Failure, classify, discard_pool


def _psycopg2(pgcode: str | None, message: str = "error") -> Exception:
    """An exception of psycopg2's (its module is what the classification looks at)
    with the server's SQLSTATE, or None when libpq raised it."""
    cls = type("Error", (Exception,), {"__module__": "psycopg2.errors", "pgcode": pgcode})
    return cls(message)


def _wrapped(orig: Exception, invalidated: bool = False,
             cls: type[sa_exc.DBAPIError] = sa_exc.OperationalError) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


PG = [
    # (SQLSTATE, what it is, classification, pool discarded)
    ("57014", "statement timeout (query_canceled)", Failure.UNAVAILABLE, False),
    ("55P03", "lock timeout (lock_not_available)", Failure.UNAVAILABLE, False),
    ("25P03", "idle-in-transaction session timeout", Failure.UNAVAILABLE, False),
    ("25006", "read-only transaction: an old primary", Failure.UNAVAILABLE, True),
    ("57P01", "terminating connection: administrator command", Failure.UNAVAILABLE, False),
    ("08006", "connection failure", Failure.UNAVAILABLE, True),
    (None, "libpq: server closed the connection, or no read-write host", Failure.UNAVAILABLE,
     True),
    ("40P01", "deadlock: a race, tried again at once", Failure.CONFLICT, False),
    ("40001", "serialization failure: a race", Failure.CONFLICT, False),
    ("22001", "value too long: the content", Failure.REFUSED, False),
    ("23514", "check constraint: the content", Failure.REFUSED, False),
]


def test_a_prepared_plan_outdated_by_a_migration_is_tried_again_other_0A000_refused():
    outdated = _wrapped(_psycopg2("0A000", "cached plan must not change result type"))
    assert classify(outdated) is Failure.CONFLICT
    assert classify(_wrapped(_psycopg2("0A000", "unsupported feature"))) is Failure.REFUSED


@pytest.mark.parametrize(("pgcode", "what", "failure", "discard"), PG,
                         ids=[f"{code}-{what}" for code, what, _, _ in PG])
def test_postgresql(pgcode, what, failure, discard):
    error = _wrapped(_psycopg2(pgcode, what))
    assert classify(error) is failure
    assert discard_pool(error) is discard


@pytest.mark.parametrize(("pgcode", "what", "failure", "discard"), PG,
                         ids=[f"{code}-{what}" for code, what, _, _ in PG])
def test_postgresql_through_psycopg3(pgcode, what, failure, discard):
    """psycopg 3's own errors (the store's pipeline), wrapped as the pipeline wraps
    them: classified as psycopg2's of the same SQLSTATE are."""
    import psycopg
    from psycopg import errors
    cls = psycopg.OperationalError if pgcode is None else errors.lookup(pgcode)
    error = sa_exc.DBAPIError.instance(None, None, cls(what), psycopg.Error,
                                       hide_parameters=True)
    assert classify(error) is failure
    assert discard_pool(error) is discard


def test_psycopg3_duplicate_key_is_an_integrity_error_the_store_retries():
    import psycopg
    from psycopg import errors
    error = sa_exc.DBAPIError.instance(None, None, errors.UniqueViolation("duplicate key"),
                                       psycopg.Error, hide_parameters=True)
    assert isinstance(error, sa_exc.IntegrityError)
    assert classify(error) is Failure.REFUSED and not discard_pool(error)


MYSQL = [
    (1969, "max_statement_time exceeded (MariaDB)", Failure.UNAVAILABLE, False),
    (3024, "max_execution_time exceeded (MySQL)", Failure.UNAVAILABLE, False),
    (1317, "query execution was interrupted", Failure.UNAVAILABLE, False),
    (1205, "lock wait timeout exceeded", Failure.UNAVAILABLE, False),
    (2013, "lost connection during query: pymysql's read_timeout", Failure.UNAVAILABLE, True),
    (2006, "server has gone away", Failure.UNAVAILABLE, True),
    (2003, "can't connect", Failure.UNAVAILABLE, True),
    (1290, "running with --read-only", Failure.UNAVAILABLE, True),
    (1792, "read-only transaction", Failure.UNAVAILABLE, True),
    (1836, "read-only mode", Failure.UNAVAILABLE, True),
    (4031, "idle transaction timeout: disconnected", Failure.UNAVAILABLE, False),
    (1213, "deadlock: a race, tried again at once", Failure.CONFLICT, False),
    (1406, "data too long: the content", Failure.REFUSED, False),
    (4025, "CONSTRAINT failed (MariaDB, a CHECK): the content", Failure.REFUSED, False),
    (3819, "check constraint violated (MySQL): the content", Failure.REFUSED, False),
]


@pytest.mark.parametrize(("errno", "what", "failure", "discard"), MYSQL,
                         ids=[f"{errno}-{what}" for errno, what, _, _ in MYSQL])
def test_mysql(errno, what, failure, discard):
    error = _wrapped(pymysql.err.OperationalError(errno, what))
    assert classify(error) is failure
    assert discard_pool(error) is discard


SQLITE = [
    ("database is locked", Failure.UNAVAILABLE),  # the busy timeout (lock_timeout) ran out
    ("database table is locked", Failure.CONFLICT),
    ("attempt to write a readonly database", Failure.UNAVAILABLE),
    ("NOT NULL constraint failed: hosts.status", Failure.REFUSED),
]


@pytest.mark.parametrize(("message", "failure"), SQLITE)
def test_sqlite(message, failure):
    error = _wrapped(sqlite3.OperationalError(message))
    assert classify(error) is failure
    assert discard_pool(error) is False


def test_a_connection_sqlalchemy_saw_lost_is_unavailable_and_discards_the_pool():
    error = _wrapped(_psycopg2("57P01", "terminating connection"), invalidated=True)
    assert classify(error) is Failure.UNAVAILABLE
    assert discard_pool(error) is True


def test_no_timeout_is_ever_refused():
    """A timeout must hold the batch, never dead-letter it."""
    timeouts = [_psycopg2("57014"), _psycopg2("55P03"), pymysql.err.OperationalError(1969, ""),
                pymysql.err.OperationalError(1205, ""), pymysql.err.OperationalError(2013, ""),
                sqlite3.OperationalError("database is locked")]
    for orig in timeouts:
        assert classify(_wrapped(orig)) is Failure.UNAVAILABLE, orig
