"""What a database error means for the batch that met it. Pure: table-tested.

A batch that fails is either tried again at once (it lost a race with a competing
consumer), held until the database can take it (the database is unreachable, stalls
past a timeout, or cannot write at all: down, read-only, full, its schema or privileges
gone), or refused for its content and dead-lettered. Holding is for the database's
trouble only: a message held for its own content would be retried forever and wedge
every host's updates behind it.
So an error is ``UNAVAILABLE`` only when it says so by its code or its connection; an
error this module does not know is ``REFUSED``, and the store asks the database whether
it still answers before it refuses anything (``Store.database_answers``).

A timeout (``engine.Timeouts``) is ``UNAVAILABLE``: a statement cancelled for running
too long, and a lock wait that ran out, too. A race between competing consumers ends in
milliseconds, and the database reports it as such (a deadlock, a serialization
failure, a duplicate key): that is ``CONFLICT``, tried again at once. A lock still held
after the whole lock timeout is a holder that is stuck (an operator's lock, a stalled
session), not a race: tried again at once, up to five times, it would keep the consume
loop waiting five lock timeouts with nothing said; held, the batch waits with back-off
and the health says why.

``discard_pool`` says when the pool's other connections are likely as bad as the one
that failed: the server answered that it is read-only (an old primary after a failover,
or a standby), or the connection was lost. New connections then go through the URL's
host list again (libpq's ``target_session_attrs=read-write``); a pre-ping would not
help, as a read-only server answers it.

PostgreSQL's errors are read alike whether psycopg2 (the engine's pool) or psycopg 3 (the
store's pipeline, ``postgresql_pipeline``) raised them: by SQLSTATE, or as the
connection's failure when libpq raised them without one.
"""

from __future__ import annotations

import enum

from sqlalchemy import exc as sa_exc


class Failure(str, enum.Enum):
    CONFLICT = "conflict"        # lost a race with another transaction: try again now
    UNAVAILABLE = "unavailable"  # the database cannot take the batch: hold it, retry later
    REFUSED = "refused"          # the database refuses the batch's content


# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_CONFLICT = {"40001", "40P01"}  # serialization failure, deadlock
_PG_UNAVAILABLE_CLASSES = {
    "08",  # connection exception
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "57",  # operator intervention: shutting down, cannot connect now
    "58",  # system error: I/O
    "42",  # undefined table or column, insufficient privilege: the schema or grants
    "3D",  # invalid catalog name: the database is gone
    "28",  # invalid authorization
    "F0", "XX",  # configuration file error, internal error
}
_PG_UNAVAILABLE = {
    "25006",  # read-only transaction: a standby, or an old primary after a failover
    "55P03",  # lock not available: a lock wait ran out its lock_timeout
    "25P03", "25P04",  # idle-in-transaction and transaction timeouts: the session ended
}  # and class 57 holds 57014, a statement cancelled (statement_timeout)
_PG_READ_ONLY = {"25006"}

# MySQL/MariaDB error numbers; 2000 to 2999 are the client library's (connection)
# errors; the server's are below 2000, and from 3000 (MySQL) and 4000 (MariaDB) up.
_MYSQL_CLIENT = range(2000, 3000)
_MYSQL_CONFLICT = {1213}  # deadlock
_MYSQL_UNAVAILABLE = {
    1021, 1037, 1038, 1040, 1041, 1053, 1114, 1129, 1203,  # disk/memory/connections/shutdown
    1044, 1045, 1049, 1142, 1143, 1227,  # access denied, unknown database, privileges
    1054, 1146,  # unknown column, no such table: the schema
    1290, 1792, 1836,  # read-only server or transaction
    1927, 4031,  # connection killed, idle timeout
    1205,  # lock wait timeout (innodb_lock_wait_timeout, lock_wait_timeout)
    1969, 3024, 1317,  # statement timeout (MariaDB, MySQL), query interrupted
}
_MYSQL_READ_ONLY = {1290, 1792, 1836}

# SQLite, by message: it has no codes through the sqlite3 module's exceptions.
_SQLITE_CONFLICT = ("database table is locked",)
_SQLITE_UNAVAILABLE = ("database is locked",  # the busy timeout ran out
                       "unable to open database file", "disk i/o error",
                       "database or disk is full", "attempt to write a readonly database",
                       "no such table", "no such column", "database disk image is malformed")


def classify(exc: sa_exc.DBAPIError) -> Failure:
    """What ``exc``, raised by the driver while a batch was applied, means for it."""
    if exc.connection_invalidated:
        return Failure.UNAVAILABLE
    orig = exc.orig
    module = type(orig).__module__
    if _is_postgresql(module):
        pgcode = _sqlstate(orig)
        if pgcode is None:  # raised by libpq, not the server: the connection failed
            return Failure.UNAVAILABLE
        if pgcode in _PG_CONFLICT or _plan_outdated(pgcode, orig):
            return Failure.CONFLICT
        if pgcode in _PG_UNAVAILABLE or pgcode[:2] in _PG_UNAVAILABLE_CLASSES:
            return Failure.UNAVAILABLE
        return Failure.REFUSED
    if module.startswith("pymysql"):
        args = getattr(orig, "args", ())
        errno = args[0] if args and isinstance(args[0], int) else None
        if errno is None or errno in _MYSQL_CLIENT:
            return Failure.UNAVAILABLE
        if errno in _MYSQL_CONFLICT:
            return Failure.CONFLICT
        if errno in _MYSQL_UNAVAILABLE:
            return Failure.UNAVAILABLE
        return Failure.REFUSED
    if module.startswith("sqlite3"):
        text = str(orig).lower()
        if any(text.startswith(m) for m in _SQLITE_CONFLICT):
            return Failure.CONFLICT
        if any(text.startswith(m) for m in _SQLITE_UNAVAILABLE):
            return Failure.UNAVAILABLE
        return Failure.REFUSED
    # Another driver: its connection-level errors say unavailable.
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return Failure.UNAVAILABLE
    return Failure.REFUSED


def _plan_outdated(pgcode: str, orig: BaseException) -> bool:
    """A prepared statement whose result changed under it (a migration altered a column
    it returns, as 0006 changes the collation of uuids and host names, while the
    consumer ran): PostgreSQL answers 0A000 "cached plan must not change result type".
    The content is not at fault: the rollback makes psycopg forget its prepared
    statements, and the batch is tried again at once, as after a race."""
    return pgcode == "0A000" and "cached plan must not change result type" in str(orig)


def discard_pool(exc: sa_exc.DBAPIError) -> bool:
    """Whether, after ``exc``, the pool's connections should be replaced by new ones:
    the server said it is read-only, or the connection was lost."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    module = type(orig).__module__
    if _is_postgresql(module):
        pgcode = _sqlstate(orig)
        return pgcode is None or pgcode in _PG_READ_ONLY or pgcode[:2] == "08"
    if module.startswith("pymysql"):
        args = getattr(orig, "args", ())
        errno = args[0] if args and isinstance(args[0], int) else None
        return errno is None or errno in _MYSQL_CLIENT or errno in _MYSQL_READ_ONLY
    return False


def _is_postgresql(module: str) -> bool:
    """Whether an exception of ``module`` is psycopg2's or psycopg 3's."""
    return module.split(".", 1)[0] in ("psycopg2", "psycopg")


def _sqlstate(orig: BaseException) -> str | None:
    """The server's SQLSTATE of a psycopg2 (``pgcode``) or psycopg 3 (``sqlstate``)
    error; None when libpq raised it (the connection failed, not the statement)."""
    return getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
