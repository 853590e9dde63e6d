"""consumer.db.failures.classify on errors the real databases raise: what holds a batch
(the database's trouble), what retries it (a race) and what refuses it (its content)."""

from __future__ import annotations

import socket
import time

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from consumer.db import engine as db_engine_module
from consumer.db.engine import Timeouts
from consumer.db.failures import Failure, classify, discard_pool

pytestmark = pytest.mark.integration


def _raised(engine: sa.Engine, *statements: str) -> sa_exc.DBAPIError:
    with pytest.raises(sa_exc.DBAPIError) as caught:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    return caught.value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_content_the_database_refuses_is_refused(db_engine):
    name = db_engine.dialect.name
    if name == "sqlite":  # SQLite stores a string of any length in a VARCHAR(255)
        error = _raised(db_engine, "INSERT INTO hosts (name) VALUES ('h')")  # NOT NULL
    else:
        long_name = "x" * 300
        error = _raised(db_engine, "INSERT INTO hosts (name, status, agent_status, "
                        "libvirt_connected, epoch, last_seq, updated_at) VALUES "
                        f"('{long_name}', 'up', 'running', true, 1, 1, '2026-01-01')")
    assert classify(error) is Failure.REFUSED


def test_a_duplicate_key_is_refused_by_the_database(db_engine):
    row = ("INSERT INTO journal (host, epoch, seq, event_type, outcome, occurred_at, "
           "applied_at) VALUES ('h', 1, 1, 'instance.started', 'applied', '2026-01-01', "
           "'2026-01-01')")
    error = _raised(db_engine, row, row)
    assert isinstance(error, sa_exc.IntegrityError)  # the store retries this first (a race)
    assert classify(error) is Failure.REFUSED


def test_a_missing_table_holds_the_batch(db_engine):
    assert classify(_raised(db_engine, "SELECT * FROM no_such_table")) is Failure.UNAVAILABLE


def test_a_read_only_database_holds_the_batch(db_engine, tmp_path):
    name = db_engine.dialect.name
    if name == "sqlite":
        engine = sa.create_engine(f"sqlite:///file:{db_engine.url.database}?mode=ro&uri=true")
        try:
            error = _raised(engine, "DELETE FROM hosts")
        finally:
            engine.dispose()
    else:
        read_only = ("SET TRANSACTION READ ONLY" if name == "postgresql"
                     else "SET SESSION TRANSACTION READ ONLY")
        with db_engine.connect() as conn:  # MariaDB: for the session's next transaction
            with pytest.raises(sa_exc.DBAPIError) as caught:
                if name != "postgresql":
                    conn.exec_driver_sql(read_only)
                    conn.commit()
                with conn.begin():
                    if name == "postgresql":
                        conn.exec_driver_sql(read_only)
                    conn.exec_driver_sql("DELETE FROM hosts")
            error = caught.value
            conn.invalidate()  # leave no read-only session in the pool
    assert classify(error) is Failure.UNAVAILABLE, error


def test_a_server_that_does_not_answer_holds_the_batch(db_engine, tmp_path):
    name = db_engine.dialect.name
    if name == "sqlite":
        (tmp_path / "a-file").write_text("")  # a path under a file can never be opened
        url = f"sqlite:///{tmp_path}/a-file/x.sqlite"
    else:
        url = db_engine.url.set(host="127.0.0.1", port=_free_port()).render_as_string(
            hide_password=False)
    engine = db_engine_module.create(url)
    try:
        with pytest.raises(sa_exc.DBAPIError) as caught:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
    assert classify(caught.value) is Failure.UNAVAILABLE


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_locked_sqlite_database_holds_the_batch(db_engine):
    """SQLite says "database is locked" once its busy timeout ([database] lock_timeout)
    ran out: the holder is stuck, not racing."""
    holder = db_engine.raw_connection()
    try:
        holder.execute("BEGIN IMMEDIATE")
        engine = sa.create_engine(db_engine.url, connect_args={"timeout": 0})
        try:
            error = _raised(engine, "BEGIN IMMEDIATE")
        finally:
            engine.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert classify(error) is Failure.UNAVAILABLE


# -- the [database] timeouts, on the real servers ------------------------------------------

def _bounded(url: str, **timeouts) -> sa.Engine:
    return db_engine_module.create(url, Timeouts(**timeouts))


def test_the_timeouts_reach_the_server(db_url):
    engine = _bounded(db_url, statement=1.5, lock=0.5)
    try:
        with engine.connect() as conn:
            name = engine.dialect.name
            if name == "postgresql":
                assert [conn.exec_driver_sql(f"SHOW {setting}").scalar() for setting in (
                    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
                ] == ["1500ms", "500ms", "1500ms"]
            elif name == "mysql":
                values = conn.exec_driver_sql(
                    "SELECT @@session.max_statement_time, @@session.innodb_lock_wait_timeout, "
                    "@@session.lock_wait_timeout, @@session.idle_transaction_timeout").one()
                assert tuple(float(v) for v in values) == (1.5, 1.0, 1.0, 2.0)
            else:
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 500
    finally:
        engine.dispose()


def _holding_a_lock(db_engine_: sa.Engine):
    """A connection holding a lock on the ``hosts`` table (SQLite: on the database), in
    an open transaction; and the statement that then waits for it."""
    name = db_engine_.dialect.name
    with db_engine_.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO hosts (name, status, agent_status, libvirt_connected, epoch, "
            "last_seq, updated_at) VALUES ('h', 'up', 'running', true, 1, 1, '2026-01-01')")
    holder = db_engine_.raw_connection()
    cursor = holder.cursor()
    if name == "postgresql":
        cursor.execute("BEGIN")
        cursor.execute("LOCK TABLE hosts IN ACCESS EXCLUSIVE MODE")
    elif name == "mysql":
        cursor.execute("BEGIN")
        cursor.execute("SELECT * FROM hosts WHERE name = 'h' FOR UPDATE")
    else:
        holder.execute("BEGIN IMMEDIATE")
    waiter = ("BEGIN IMMEDIATE" if name == "sqlite"
              else "SELECT * FROM hosts WHERE name = 'h' FOR UPDATE")
    return holder, waiter


def test_a_lock_held_past_lock_timeout_holds_the_batch(db_engine):
    """Not a race retried at once (five lock timeouts in a row), not a refusal: held."""
    holder, waiter = _holding_a_lock(db_engine)
    engine = _bounded(db_engine.url.render_as_string(hide_password=False),
                      lock=0.5, statement=5)
    try:
        started = time.monotonic()
        with pytest.raises(sa_exc.DBAPIError) as caught:
            with engine.begin() as conn:
                if db_engine.dialect.name != "sqlite":  # SQLite's BEGIN is the wait
                    conn.exec_driver_sql(waiter)
        waited = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    assert classify(caught.value) is Failure.UNAVAILABLE, caught.value
    assert not discard_pool(caught.value)  # the server is fine: keep the connections
    assert 0.4 < waited < 3, waited  # MariaDB counts whole seconds


@pytest.mark.parametrize("db_url", ["postgresql", "mysql"], indirect=True)
def test_a_statement_past_statement_timeout_holds_the_batch(db_url):
    engine = _bounded(db_url, statement=0.5)
    sleep = ("SELECT pg_sleep(5)" if engine.dialect.name == "postgresql" else "SELECT SLEEP(5)")
    try:
        started = time.monotonic()
        with pytest.raises(sa_exc.DBAPIError) as caught:
            with engine.connect() as conn:
                conn.exec_driver_sql(sleep)
        waited = time.monotonic() - started
    finally:
        engine.dispose()
    assert classify(caught.value) is Failure.UNAVAILABLE, caught.value
    assert 0.4 < waited < 3, waited
