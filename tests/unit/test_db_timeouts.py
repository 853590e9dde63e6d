"""The [database] timeouts: the options, and what each backend's driver is given for them
(the parameters libpq or pymysql would connect with, read without a server)."""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from consumer import config
from consumer.db import engine as db_engine
from consumer.db.engine import Timeouts


class _Captured(Exception):
    """Raised instead of connecting: the parameters are what the test wanted."""


def connect_parameters(url: str, timeouts: Timeouts = Timeouts()) -> dict:
    """The keyword arguments ``db_engine.create(url, timeouts)`` would hand to the
    driver's connect(), captured before any connection is attempted."""
    engine = db_engine.create(url, timeouts)
    captured: dict = {}

    @sa.event.listens_for(engine, "do_connect")
    def _capture(_dialect, _record, _cargs, cparams):
        captured.update(cparams)
        raise _Captured

    try:
        with pytest.raises(_Captured):
            engine.connect()
    finally:
        engine.dispose()
    return captured


def test_the_options_default_to_the_engines_defaults():
    conf = config.make_conf()
    conf([], default_config_files=[])
    assert config.database_timeouts(conf) == Timeouts()
    assert Timeouts() == Timeouts(connect=5, statement=15.0, lock=5.0, keepalive_idle=10,
                                  keepalive_interval=5, keepalive_count=3, tcp_user_timeout=20.0)


def test_the_options_reach_the_timeouts(tmp_path):
    path = tmp_path / "consumer.conf"
    path.write_text("[database]\nconnect_timeout = 3\nstatement_timeout = 1.5\n"
                    "lock_timeout = 0.5\nkeepalive_idle = 7\nkeepalive_interval = 2\n"
                    "keepalive_count = 4\ntcp_user_timeout = 9\n")
    conf = config.make_conf()
    conf(["--config-file", str(path)], default_config_files=[])
    assert config.database_timeouts(conf) == Timeouts(
        connect=3, statement=1.5, lock=0.5, keepalive_idle=7, keepalive_interval=2,
        keepalive_count=4, tcp_user_timeout=9.0)


def test_postgresql_gets_every_bound():
    params = connect_parameters("postgresql+psycopg2://lc@db.example/lifecycle")
    assert params == {
        "host": "db.example", "dbname": "lifecycle", "user": "lc",
        "connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
        "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 20000,
        "options": "-c lock_timeout=5000 -c statement_timeout=15000 "
                   "-c idle_in_transaction_session_timeout=15000",
    }


def test_a_multi_host_url_reaches_libpq_as_its_host_list():
    """SQLAlchemy joins repeated ``host`` parameters into libpq's comma-separated
    lists; target_session_attrs passes through."""
    params = connect_parameters(
        "postgresql+psycopg2://lc@/lifecycle?host=db1:5432&host=db2:5433"
        "&target_session_attrs=read-write", Timeouts(statement=1, lock=0.5, connect=1))
    assert params["host"] == "db1,db2"
    assert params["port"] == "5432,5433"
    assert params["target_session_attrs"] == "read-write"
    assert params["connect_timeout"] == 2  # libpq's least
    assert params["options"] == ("-c lock_timeout=500 -c statement_timeout=1000 "
                                 "-c idle_in_transaction_session_timeout=1000")


def test_the_urls_own_parameters_win_and_its_options_come_last():
    params = connect_parameters("postgresql+psycopg2://lc@db/lifecycle?connect_timeout=30"
                                "&options=-c%20statement_timeout%3D0")
    assert params["connect_timeout"] == "30"
    assert params["options"] == ("-c lock_timeout=5000 -c statement_timeout=15000 "
                                 "-c idle_in_transaction_session_timeout=15000 "
                                 "-c statement_timeout=0")  # the server keeps the last


def test_no_statement_timeout_leaves_it_to_the_server():
    params = connect_parameters("postgresql+psycopg2://lc@db/lifecycle", Timeouts(statement=0))
    assert params["options"] == "-c lock_timeout=5000"


def test_mysql_bounds_the_client_and_the_session():
    params = connect_parameters("mysql+pymysql://root@db/lifecycle")
    assert (params["connect_timeout"], params["read_timeout"], params["write_timeout"]) == (
        5, 15.0 + db_engine.MYSQL_CLIENT_MARGIN, 15.0 + db_engine.MYSQL_CLIENT_MARGIN)
    assert db_engine.mysql_session_settings(Timeouts(lock=0.5, statement=1.5), mariadb=True) == {
        "innodb_lock_wait_timeout": 1, "lock_wait_timeout": 1,  # whole seconds, rounded up
        "max_statement_time": 1.5, "idle_transaction_timeout": 2}
    assert db_engine.mysql_session_settings(Timeouts(statement=1.5), mariadb=False) == {
        "innodb_lock_wait_timeout": 5, "lock_wait_timeout": 5, "max_execution_time": 1500}


def test_sqlite_waits_for_a_lock_as_long_as_lock_timeout(tmp_path):
    for timeouts, expected_ms in ((Timeouts(), 5000), (Timeouts(lock=0.5), 500)):
        engine = db_engine.create(f"sqlite:///{tmp_path}/x.sqlite", timeouts)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == expected_ms
        finally:
            engine.dispose()


def test_the_sqlite_database_is_created_for_its_owner_only(tmp_path):
    import os
    import stat
    from consumer.db import engine as db_engine
    path = tmp_path / "new" / "lifecycle.sqlite"
    engine = db_engine.create(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    finally:
        engine.dispose()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    os.chmod(path, 0o644)  # an existing database open to others is tightened
    db_engine.create(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
