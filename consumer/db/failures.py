"""What a database error means for the batch that met it. Pure: table-tested.

A batch that fails is either tried again at once (it lost a race with a competing
consumer), held until the database can take it (the database is unreachable, or cannot
write at all: down, read-only, full, its schema or privileges gone), or refused for its
content and dead-lettered. Holding is for the database's trouble only: a message held
for its own content would be retried forever and wedge every host's updates behind it.
So an error is ``UNAVAILABLE`` only when it says so by its code or its connection; an
error this module does not know is ``REFUSED``, and the store asks the database whether
it still answers before it refuses anything (``Store.database_answers``).
"""

from __future__ import annotations

import enum

from sqlalchemy import exc as sa_exc


class Failure(str, enum.Enum):
    CONFLICT = "conflict"        # lost a race with another transaction: try again now
    UNAVAILABLE = "unavailable"  # the database cannot take the batch: hold it, retry later
    REFUSED = "refused"          # the database refuses the batch's content


# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_CONFLICT = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available
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
_PG_UNAVAILABLE = {"25006"}  # read-only transaction: a standby, after a failover

# MySQL/MariaDB error numbers; 2000 and up are the client library's (connection) errors.
_MYSQL_CONFLICT = {1205, 1213}  # lock wait timeout, deadlock
_MYSQL_UNAVAILABLE = {
    1021, 1037, 1038, 1040, 1041, 1053, 1114, 1129, 1203,  # disk/memory/connections/shutdown
    1044, 1045, 1049, 1142, 1143, 1227,  # access denied, unknown database, privileges
    1054, 1146,  # unknown column, no such table: the schema
    1290, 1792, 1836,  # read-only server or transaction
    1927, 4031,  # connection killed, idle timeout
}

# SQLite, by message: it has no codes through the sqlite3 module's exceptions.
_SQLITE_CONFLICT = ("database is locked", "database table is locked")
_SQLITE_UNAVAILABLE = ("unable to open database file", "disk i/o error",
                       "database or disk is full", "attempt to write a readonly database",
                       "no such table", "no such column", "database disk image is malformed")


def classify(exc: sa_exc.DBAPIError) -> Failure:
    """What ``exc``, raised by the driver while a batch was applied, means for it."""
    if exc.connection_invalidated:
        return Failure.UNAVAILABLE
    orig = exc.orig
    pgcode = getattr(orig, "pgcode", None)
    module = type(orig).__module__
    if module.startswith("psycopg2"):
        if pgcode is None:  # raised by libpq, not the server: the connection failed
            return Failure.UNAVAILABLE
        if pgcode in _PG_CONFLICT:
            return Failure.CONFLICT
        if pgcode in _PG_UNAVAILABLE or pgcode[:2] in _PG_UNAVAILABLE_CLASSES:
            return Failure.UNAVAILABLE
        return Failure.REFUSED
    if module.startswith("pymysql"):
        args = getattr(orig, "args", ())
        errno = args[0] if args and isinstance(args[0], int) else None
        if errno is None or errno >= 2000:
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
