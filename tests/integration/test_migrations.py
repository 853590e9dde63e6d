"""``lifecycle-manage db sync`` against SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from consumer.cmd import manage
from consumer.db import engine as db_engine
from consumer.db import migrate
from consumer.db.tables import faults, hosts, instances, journal, metadata

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_engine(empty_db_url):
    engine = db_engine.create(empty_db_url)
    yield engine
    engine.dispose()


def _tables(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_sync_creates_the_schema_and_a_second_sync_is_a_no_op(empty_engine):
    assert migrate.current(empty_engine) is None
    assert not _tables(empty_engine) & {"hosts", "instances", "journal"}

    migrate.sync(empty_engine)
    assert migrate.current(empty_engine) == migrate.head()
    assert {"hosts", "instances", "journal", "alembic_version"} <= _tables(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(hosts.insert().values(
            name="h1", status="up", agent_status="running", libvirt_connected=True,
            last_heartbeat_at=None, epoch=1, last_seq=1,
            updated_at=datetime.datetime(2026, 1, 1)))

    migrate.sync(empty_engine)
    assert migrate.current(empty_engine) == migrate.head()
    with empty_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(hosts)).scalar() == 1
        assert conn.execute(sa.text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1


def test_migrated_schema_matches_the_tables_module(empty_engine):
    migrate.sync(empty_engine)
    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_timestamps_keep_microseconds(empty_engine):
    migrate.sync(empty_engine)
    moment = datetime.datetime(2026, 11, 25, 8, 54, 44, 123456)
    later = moment + datetime.timedelta(microseconds=1)
    with empty_engine.begin() as conn:
        conn.execute(hosts.insert().values(
            name="h1", status="up", agent_status="running", libvirt_connected=True,
            last_heartbeat_at=moment, epoch=1, last_seq=1, updated_at=later))
        conn.execute(journal.insert().values(
            host="h1", epoch=1, seq=1, event_type="instance.started", instance_uuid=None,
            outcome="applied", occurred_at=moment, applied_at=later))
    with empty_engine.connect() as conn:
        row = conn.execute(sa.select(hosts)).one()
        entry = conn.execute(sa.select(journal)).one()
    assert row.last_heartbeat_at == moment
    assert row.updated_at == later
    assert entry.occurred_at == moment
    assert entry.applied_at == later


def test_manage_db_sync_command(empty_db_url, tmp_path, capsys):
    config = tmp_path / "manage.conf"
    config.write_text(f"[database]\nconnection = {empty_db_url}\n")
    assert manage.main(["--config-file", str(config), "db", "sync"]) == 0
    assert migrate.head() in capsys.readouterr().out
    assert manage.main(["--config-file", str(config), "db", "version"]) == 0
    assert capsys.readouterr().out.strip() == migrate.head()


def test_names_compare_exactly_and_hold_any_character(empty_engine):
    """MariaDB's usual defaults (latin1, or a case-insensitive utf8mb4 collation) would
    make 'Compute-1' and 'compute-1' one key and refuse names outside latin1; after
    ``db sync`` every backend stores both hosts and the name as given."""
    if empty_engine.dialect.name in ("mysql", "mariadb"):
        with empty_engine.begin() as conn:  # the defaults of a database made carelessly
            conn.exec_driver_sql("ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    migrate.sync(empty_engine)
    moment = datetime.datetime(2026, 11, 25, 8, 54, 44)
    with empty_engine.begin() as conn:
        # (Trailing spaces still compare equal on MariaDB, PAD SPACE: a host name cannot
        # hold one, see limits.HOST_PATTERN.)
        for name in ("compute-1", "Compute-1", "compute-1.example"):
            conn.execute(hosts.insert().values(
                name=name, status="up", agent_status="running", libvirt_connected=True,
                last_heartbeat_at=None, epoch=1, last_seq=1, updated_at=moment))
        conn.execute(instances.insert().values(
            uuid="0d6f7c9e-1b7a-4c59-9d1e-3f0b8f2a6c11", name="日本語の名前 🚀", host="Compute-1",
            power_state="running", deleted=False, epoch=1, seq=1,
            last_event_type="instance.started", event_occurred_at=moment, applied_at=moment))
        conn.execute(journal.insert().values(
            host="Compute-1", epoch=1, seq=1, event_type="instance.started",
            instance_uuid=None, outcome="applied", occurred_at=moment, applied_at=moment))
    with empty_engine.connect() as conn:
        names = set(conn.execute(sa.select(hosts.c.name)).scalars())
        found = conn.execute(sa.select(journal.c.host).where(journal.c.host == "compute-1")).all()
        vm_name = conn.execute(sa.select(instances.c.name)).scalar_one()
    assert vm_name == "日本語の名前 🚀"
    assert names == {"compute-1", "Compute-1", "compute-1.example"}
    assert found == []


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_instances_leave_room_for_hot_updates_on_postgresql(empty_engine):
    migrate.sync(empty_engine)
    with empty_engine.connect() as conn:
        options = conn.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'instances'").scalar()
    assert options == ["fillfactor=70"]


_KEY_COLUMNS = [("hosts", "name"), ("instances", "uuid"), ("instances", "host"),
                ("journal", "host"), ("journal", "instance_uuid")]


def _collations(engine) -> dict[tuple[str, str], str | None]:
    with engine.connect() as conn:
        return {(table, column): conn.exec_driver_sql(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_name = %s AND column_name = %s", (table, column)).scalar()
            for table, column in _KEY_COLUMNS}


@pytest.mark.parametrize("empty_db_url", ["postgresql"], indirect=True)
def test_names_and_uuids_compare_bytewise_on_postgresql_and_the_downgrade_undoes_it(
        empty_engine):
    migrate.sync(empty_engine, "0005")
    with empty_engine.begin() as conn:  # rows written before the upgrade keep their keys
        conn.execute(hosts.insert().values(
            name="Compute-1", status="up", agent_status="running", libvirt_connected=True,
            last_heartbeat_at=None, epoch=1, last_seq=1,
            updated_at=datetime.datetime(2026, 1, 1)))
    assert set(_collations(empty_engine).values()) == {None}  # the database's default
    migrate.sync(empty_engine)
    assert set(_collations(empty_engine).values()) == {"C"}
    with empty_engine.connect() as conn:
        assert conn.execute(sa.select(hosts.c.name).where(hosts.c.name == "Compute-1")
                            ).scalar() == "Compute-1"
        assert conn.execute(sa.select(hosts.c.name).where(hosts.c.name == "compute-1")
                            ).scalar() is None
        conn.exec_driver_sql("SET enable_seqscan = off")  # an empty table: the index if usable
        plan = "\n".join(conn.exec_driver_sql(
            "EXPLAIN SELECT uuid FROM instances WHERE uuid = ANY('{a,b}'::text[])").scalars())
    assert "instances_pkey" in plan  # a text parameter still meets the index
    with empty_engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0005")
    assert set(_collations(empty_engine).values()) == {None}


_OLD_RELEASE_INSERT = (  # the columns the consumer of the release before names
    "INSERT INTO instances (uuid, name, host, power_state, deleted, epoch, seq, "
    "last_event_type, event_occurred_at, applied_at) VALUES "
    "(:uuid, 'vm', 'h1', 'running', :deleted, 1, :seq, 'instance.started', :at, :at)")


def test_0007_keeps_rows_and_lets_the_previous_release_insert_instances(empty_engine):
    """After ``db sync`` to 0007, rows written before keep their values (no reason, no
    reboots, no fault), and an INSERT naming only the columns the release before knew
    (its SQLAlchemy tables, its PostgreSQL pipeline's column lists) still succeeds."""
    migrate.sync(empty_engine, "0006")
    moment = datetime.datetime(2026, 12, 7, 1, 2, 3, 456789)
    with empty_engine.begin() as conn:
        conn.execute(sa.text(_OLD_RELEASE_INSERT),
                     {"uuid": "u-before", "deleted": False, "seq": 1, "at": moment})
    migrate.sync(empty_engine)
    assert migrate.current(empty_engine) == migrate.head()
    with empty_engine.begin() as conn:
        conn.execute(sa.text(_OLD_RELEASE_INSERT),
                     {"uuid": "u-after", "deleted": False, "seq": 2, "at": moment})
    with empty_engine.connect() as conn:
        rows = conn.execute(sa.select(instances.c.uuid, instances.c.state_reason,
                                      instances.c.reboots, instances.c.last_fault)
                            .order_by(instances.c.uuid)).all()
    assert [tuple(r) for r in rows] == [("u-after", None, 0, None), ("u-before", None, 0, None)]


def test_0007_faults_table_and_its_downgrade(empty_engine):
    migrate.sync(empty_engine)
    moment = datetime.datetime(2026, 12, 7, 1, 2, 3, 456789)
    with empty_engine.begin() as conn:
        conn.execute(faults.insert().values(
            host="Compute-1", epoch=1, seq=7, instance_uuid="u1", event_type="instance.io_error",
            occurred_at=moment, first_occurred_at=moment - datetime.timedelta(seconds=1),
            count=37, fields='{"device": "vda", "path": "/d/\u00e9", "action": "pause", '
                             '"reason": "eio"}', applied_at=moment))
        conn.execute(faults.insert().values(  # a host differing only in case is another key
            host="compute-1", epoch=1, seq=7, instance_uuid="u1", event_type="instance.rebooted",
            occurred_at=moment, first_occurred_at=moment, count=1, fields="{}",
            applied_at=moment))
    with empty_engine.connect() as conn:
        row = conn.execute(sa.select(faults).where(faults.c.host == "Compute-1")).one()
    assert (row.count, row.occurred_at, row.event_type) == (37, moment, "instance.io_error")
    assert "/d/\u00e9" in row.fields
    if empty_engine.dialect.name == "postgresql":
        with empty_engine.connect() as conn:
            collations = set(conn.exec_driver_sql(
                "SELECT collation_name FROM information_schema.columns WHERE table_name = "
                "'faults' AND column_name IN ('host', 'instance_uuid')").scalars())
        assert collations == {"C"}
    with empty_engine.begin() as conn:
        command.downgrade(migrate._config(conn), "0006")
    assert "faults" not in _tables(empty_engine)
    columns = {c["name"] for c in sa.inspect(empty_engine).get_columns("instances")}
    assert not columns & {"state_reason", "reboots", "last_fault"}
    migrate.sync(empty_engine)
    assert "faults" in _tables(empty_engine)
