"""Engines for the three supported backends (``failures`` says what their errors mean).

Every wait for the database is bounded (``Timeouts``): connecting, a statement, a lock,
and a peer that stops answering on a connection that is otherwise idle. A database that
stalls therefore ends in an error, which ``failures`` classifies as the database being
unavailable, rather than in a call that never returns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import weakref

import sqlalchemy as sa
from sqlalchemy import event as sa_event

from lifecycle_common import timeutil

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Timeouts:
    """Seconds; the ``[database]`` options of the same names (``config.database_timeouts``).
    ``statement`` 0: no statement timeout."""
    connect: int = 5
    statement: float = 15.0
    lock: float = 5.0
    keepalive_idle: int = 10
    keepalive_interval: int = 5
    keepalive_count: int = 3
    tcp_user_timeout: float = 20.0


# The client's own read and write bound on MariaDB/MySQL (pymysql) is this much longer
# than the statement timeout, so that the server's limit answers first: a clean error,
# and the connection stays usable.
MYSQL_CLIENT_MARGIN = 5.0


def create(url: str, timeouts: Timeouts = Timeouts()) -> sa.Engine:
    """An engine for ``url`` whose every wait is bounded by ``timeouts``. SQLite gets
    WAL and a busy timeout so that lifecycle-manage can read while the consumer writes.
    A connection parameter given in the URL's query wins over the one ``timeouts``
    would set (PostgreSQL's ``options`` are joined, the URL's last)."""
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite(url, timeouts)
    options = {}
    connect_args = {}
    if backend == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        if parsed.get_driver_name() == "psycopg2":
            # A batch's UPDATEs of many instance rows in a few round trips (execute_batch)
            # rather than one round trip per row.
            options.update(executemany_mode="values_plus_batch", executemany_batch_page_size=500)
        connect_args = postgresql_connect_args(timeouts, dict(parsed.query))
    elif backend in ("mysql", "mariadb") and parsed.get_driver_name() == "pymysql":
        connect_args = mysql_connect_args(timeouts, dict(parsed.query))
    # Pool: the consume loop's connection, the liveness thread's, and room for a
    # check that the database still answers (Store.database_answers) beside them.
    engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                              connect_args=connect_args, **options)
    if backend in ("mysql", "mariadb") and parsed.get_driver_name() == "pymysql":
        _bound_mysql_sessions(engine, timeouts)
    if backend == "postgresql" and connect_args:
        _, params = engine.dialect.create_connect_args(engine.url)
        _LIBPQ_PARAMS[engine] = {**params, **connect_args}
    return engine


# The libpq parameters of each PostgreSQL engine ``create`` made: its URL's and those of
# its Timeouts, for connections of psycopg 3's own beside the engine's pool.
_LIBPQ_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def libpq_params(engine: sa.Engine) -> dict | None:
    """The keyword arguments of ``psycopg.connect`` that reach the database of
    ``engine`` as its own connections do: the same hosts (a multi-host URL's list, with
    its target_session_attrs), credentials and ``Timeouts``. None: ``engine`` is not a
    PostgreSQL engine made by ``create``."""
    return _LIBPQ_PARAMS.get(engine)


def postgresql_connect_args(timeouts: Timeouts, query: dict) -> dict:
    """libpq's parameters for ``timeouts`` (``query``: those the URL gives itself).
    The server cancels a statement after ``statement``, a lock wait after ``lock``, and
    ends a session idle inside a transaction after ``statement`` (so that a consumer
    that stopped mid-transaction does not hold its locks for long); the client gives up
    connecting to each host after ``connect`` and on a silent peer after the
    keepalives or ``tcp_user_timeout``."""
    settings = {"lock_timeout": _ms(timeouts.lock)}
    if timeouts.statement > 0:
        settings.update(statement_timeout=_ms(timeouts.statement),
                        idle_in_transaction_session_timeout=_ms(timeouts.statement))
    args = {
        "connect_timeout": max(2, int(timeouts.connect)),  # libpq's least: 2 s
        "keepalives": 1,
        "keepalives_idle": timeouts.keepalive_idle,
        "keepalives_interval": timeouts.keepalive_interval,
        "keepalives_count": timeouts.keepalive_count,
        "tcp_user_timeout": _ms(timeouts.tcp_user_timeout),
        "options": " ".join(f"-c {name}={value}" for name, value in settings.items()),
    }
    if "options" in query:
        args["options"] += " " + query["options"]
    return {key: value for key, value in args.items() if key == "options" or key not in query}


def mysql_connect_args(timeouts: Timeouts, query: dict) -> dict:
    """pymysql's parameters for ``timeouts``: it bounds the TCP connection (and the
    handshake) by ``connect_timeout``, and every read from and write to the socket by
    ``read_timeout``/``write_timeout``; past them it closes the connection and raises
    2013 (lost connection)."""
    args: dict = {"connect_timeout": timeouts.connect}
    if timeouts.statement > 0:
        bound = timeouts.statement + MYSQL_CLIENT_MARGIN
        args.update(read_timeout=bound, write_timeout=bound)
    return {key: value for key, value in args.items() if key not in query}


def mysql_session_settings(timeouts: Timeouts, mariadb: bool) -> dict[str, object]:
    """Session variables that bound lock waits (row locks: ``innodb_lock_wait_timeout``;
    table and metadata locks, e.g. LOCK TABLES: ``lock_wait_timeout``; whole seconds)
    and statements (MariaDB's ``max_statement_time``, seconds, every statement; MySQL's
    ``max_execution_time``, milliseconds, SELECT only); MariaDB also ends a session
    idle inside a transaction after the statement timeout."""
    lock = max(1, math.ceil(timeouts.lock))
    settings: dict[str, object] = {"innodb_lock_wait_timeout": lock, "lock_wait_timeout": lock}
    if timeouts.statement > 0:
        if mariadb:
            settings["max_statement_time"] = timeouts.statement
            # As PostgreSQL's idle_in_transaction_session_timeout: a session that
            # stopped mid-transaction does not hold its locks for long.
            settings["idle_transaction_timeout"] = max(1, math.ceil(timeouts.statement))
        else:
            settings["max_execution_time"] = _ms(timeouts.statement)
    return settings


def keepalive_socket_options(timeouts: Timeouts) -> list[tuple[int, int, int]]:
    """``setsockopt`` arguments that bound a silent peer on a TCP socket as libpq's
    keepalive parameters do (pymysql sets only SO_KEEPALIVE itself)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", timeouts.keepalive_idle),
                        ("TCP_KEEPINTVL", timeouts.keepalive_interval),
                        ("TCP_KEEPCNT", timeouts.keepalive_count),
                        ("TCP_USER_TIMEOUT", _ms(timeouts.tcp_user_timeout))):
        if hasattr(socket, name) and value > 0:
            options.append((socket.IPPROTO_TCP, getattr(socket, name), int(value)))
    return options


def _bound_mysql_sessions(engine: sa.Engine, timeouts: Timeouts) -> None:
    @sa_event.listens_for(engine, "connect")
    def _mysql_session(dbapi_conn, _record):
        mariadb = "mariadb" in dbapi_conn.get_server_info().lower()
        settings = mysql_session_settings(timeouts, mariadb)
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET SESSION " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
        sock = getattr(dbapi_conn, "_sock", None)  # pymysql's socket: no public accessor
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            for option in keepalive_socket_options(timeouts):
                sock.setsockopt(*option)


def _sqlite(url: str, timeouts: Timeouts) -> sa.Engine:
    _private_file(sa.engine.make_url(url).database)
    # The busy timeout: how long a writer waits for another's lock (a file on this
    # machine: nothing else to bound).
    engine = sa.create_engine(url, connect_args={"timeout": timeouts.lock})

    @sa_event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below decide

    @sa_event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _private_file(path: str | None) -> None:
    """Create the SQLite database file readable by its owner only (0600; its -wal and
    -shm files take the same mode), in a directory of 0700 if it makes one; an existing
    file open to others is tightened. The instance database names every host and
    instance of the cloud."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:  # SQLite says why, as a database error, when it opens it
        LOG.debug("cannot create %s beforehand: %s", path, exc)
        return
    try:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
            LOG.info("%s was open to others (%o): now %o", path, mode, mode & 0o700)
    finally:
        os.close(fd)


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def naive_utc(moment):
    """Datetimes are stored naive, in UTC, on every backend."""
    return moment.astimezone(timeutil.UTC).replace(tzinfo=None)


def aware(moment):
    return None if moment is None else moment.replace(tzinfo=timeutil.UTC)
