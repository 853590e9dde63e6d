"""A PostgreSQL primary and a synchronous streaming standby of a test's own.

``PgPair`` runs PostgreSQL 15's own programs from ``/usr/lib/postgresql/15/bin``
(``initdb``, ``pg_ctl``, ``pg_basebackup``) as the ``postgres`` OS user, in one temporary
directory (``lcetest-pg-<hex>``), listening on free ports of 127.0.0.1 with trust
authentication there and nowhere else; the machine's own cluster (5432) is left alone.

The primary names the standby in ``synchronous_standby_names``, so a commit it has
acknowledged is on both: a failover loses nothing a client was told was committed. The
standby's own configuration names no synchronous standby, so that once promoted it
does not wait for one that does not exist. The old primary keeps its setting: a commit
still waiting there when the standby is promoted stays waiting (and invisible) instead
of being released as committed on the old primary alone. ``make_primary_read_only``
(``default_transaction_read_only``, what a fencing script does to a primary it cannot
stop) is why it then never blocks: no transaction there writes any more.

Every server records its owner (this process's pid and start time) in its environment
and the directory holds an ``owner`` file; ``start()`` first reaps servers and
directories whose owner is gone, so a killed test session does not leave servers
behind for long. ``destroy()`` is idempotent and also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from lab.rabbit_node import (  # a test session's token; /proc
    _owner_alive, _owner_token, process_environments)
from lab.waiting import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PROGRAMS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
OS_USER = "postgres"
STANDBY_NAME = "lcetest_standby"

DIR_PREFIX = "lcetest-pg-"
OWNER_VAR = "LIFECYCLE_TEST_PG_OWNER"
DIR_VAR = "LIFECYCLE_TEST_PG_DIR"

_RESERVED_PORTS = frozenset({3306, 5432, 5671, 5672})
_POLL_INTERVAL = 0.05


class PgPairError(RuntimeError):
    """A server failed to start, to stop, or to change role."""


def postgresql_installed() -> None:
    """Raise (for ``require_service``) unless PostgreSQL 15's programs and the
    ``postgres`` OS user are on this machine."""
    missing = [name for name in PROGRAMS if not (PG_BIN / name).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not in {PG_BIN}")
    pwd.getpwnam(OS_USER)
    if os.geteuid() != 0:
        raise PermissionError(f"running PostgreSQL as {OS_USER} needs root")


class PgServer:
    """One server of the pair: its data directory, port and log."""

    def __init__(self, directory: Path, role: str):
        self.role = role
        self.data = directory / role
        self.log = directory / f"{role}.log"
        self.port = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{OS_USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", timeout: int = 3):
        """A psycopg2 connection in autocommit mode."""
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=OS_USER,
                                dbname=database, connect_timeout=timeout)
        conn.autocommit = True
        return conn

    def query(self, sql: str, database: str = "postgres"):
        """The rows ``sql`` returns (None for a statement without rows)."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else None
        finally:
            conn.close()


class PgPair:
    """A primary and its synchronous standby; ``start()`` them, ``destroy()`` them (or
    use the pair as a context manager)."""

    def __init__(self, base_dir: str | os.PathLike[str] | None = None,
                 startup_timeout: float = 60.0):
        self.startup_timeout = startup_timeout
        self.directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base_dir))
        self.primary = PgServer(self.directory, "primary")
        self.standby = PgServer(self.directory, "standby")
        self._lock = threading.Lock()
        self._destroyed = False
        self._started = False
        user = pwd.getpwnam(OS_USER)
        self._uid, self._gid = user.pw_uid, user.pw_gid
        (self.directory / "owner").write_text(_owner_token())
        os.chmod(self.directory, 0o755)
        os.chown(self.directory, self._uid, self._gid)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> PgPair:
        """initdb the primary, start it, clone the standby with ``pg_basebackup -R``,
        start it, and wait until it streams as the primary's synchronous standby."""
        if self._destroyed:
            raise PgPairError("this pair was destroyed; make a new PgPair")
        if self._started:
            return self
        self._started = True
        reap_leftovers()
        atexit.register(self.destroy)
        try:
            self._init_primary()
            self._start(self.primary)
            self._clone_standby()
            self._start(self.standby)
            self._wait(lambda: self.primary.query(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = "
                f"'{STANDBY_NAME}' AND state = 'streaming' AND sync_state = 'sync'"),
                "the standby to stream synchronously")
            return self
        except BaseException:
            self.destroy()  # also on KeyboardInterrupt: never leave a half-started pair
            raise

    def destroy(self) -> None:
        """Stop both servers (immediately: their data is thrown away) and remove the
        directory. Safe to call more than once, from any thread."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        try:
            for server in (self.standby, self.primary):
                if server.data.exists():
                    with contextlib.suppress(subprocess.SubprocessError, PgPairError):
                        self._pg_ctl(server, "stop", "-m", "immediate", timeout=30)
            _kill_owned(str(self.directory))  # whatever survived
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            atexit.unregister(self.destroy)

    def __enter__(self) -> PgPair:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.destroy()

    # -- addresses -----------------------------------------------------------------------

    def multi_host_url(self, database: str) -> str:
        """The consumer's URL over both: libpq tries the hosts in turn and keeps the
        first that accepts writes."""
        return (f"postgresql+psycopg2://{OS_USER}@/{database}"
                f"?host=127.0.0.1:{self.primary.port}&host=127.0.0.1:{self.standby.port}"
                "&target_session_attrs=read-write")

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE`` on the primary; returns once the standby has it too."""
        self.primary.query(f'CREATE DATABASE "{name}"')
        self.wait_for_standby()

    def wait_for_standby(self) -> None:
        """Wait until the standby has replayed all the primary has written so far: a
        synchronous commit is on the standby's disk when acknowledged, but visible to
        its readers only once replayed."""
        target = self.primary.query("SELECT pg_current_wal_lsn()")[0][0]
        self._wait(lambda: self.standby.query(
            f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0],
            "the standby to replay the primary's WAL")

    # -- faults ----------------------------------------------------------------------------

    def stop_primary(self) -> None:
        """Stop the primary (fast: sessions are terminated, as when it goes away)."""
        self._pg_ctl(self.primary, "stop", "-m", "fast", timeout=60)

    def make_primary_read_only(self) -> None:
        """Fence the running primary: every transaction that begins from now on is read
        only (``default_transaction_read_only``, reloaded). Returns once a new session
        sees it and no commit waits for the standby any more."""
        self.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
        self.primary.query("SELECT pg_reload_conf()")
        self._wait(lambda: self.primary.query("SHOW default_transaction_read_only")[0][0] == "on",
                   "the primary to be read-only")
        self._wait(lambda: not self.primary.query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep'"),
            "commits waiting for the standby to be acknowledged")

    def promote(self) -> float:
        """Promote the standby; returns the moment (``time.monotonic()``) it first
        accepted a write, having waited for it."""
        self._pg_ctl(self.standby, "promote", "-w", timeout=60)

        def writable():
            conn = self.standby.connect()
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT txid_current()")  # an xid: refused in recovery
                return True
            except Exception:  # noqa: BLE001 - still in recovery, or still starting
                return False
            finally:
                conn.close()
        self._wait(writable, "the promoted standby to accept writes")
        return time.monotonic()

    # -- internals ---------------------------------------------------------------------------

    def _init_primary(self) -> None:
        self._run([PG_BIN / "initdb", "-D", self.primary.data, "-U", OS_USER,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], timeout=120)
        self._configure(self.primary, [
            "wal_level = replica",
            "max_wal_senders = 5",
            "max_replication_slots = 5",
            f"synchronous_standby_names = '{STANDBY_NAME}'",
            "synchronous_commit = on",
            "hot_standby = on",
        ])

    def _clone_standby(self) -> None:
        self._run([PG_BIN / "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port),
                   "-U", OS_USER, "-D", self.standby.data, "-R", "-X", "stream",
                   "-c", "fast", "--no-sync"], timeout=120)
        # Appended after the primary's lines it copied: the last setting wins.
        self._configure(self.standby, [
            f"cluster_name = '{STANDBY_NAME}'",  # its application_name on the primary
            "synchronous_standby_names = ''",  # once promoted, wait for nobody
        ])

    def _configure(self, server: PgServer, lines: list[str]) -> None:
        server.port = _free_port()
        common = [
            "listen_addresses = '127.0.0.1'",
            f"port = {server.port}",
            f"unix_socket_directories = '{self.directory}'",
            "max_connections = 40",
            "shared_buffers = 32MB",
            "fsync = off",  # a test's throw-away data; replication still waits
            "full_page_writes = off",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] %a '",
        ]
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write("\n# lcetest\n" + "\n".join(common + lines) + "\n")

    def _start(self, server: PgServer) -> None:
        try:
            self._pg_ctl(server, "start", "-w", "-t", str(int(self.startup_timeout)),
                         "-l", server.log, timeout=self.startup_timeout + 15)
        except PgPairError as error:
            raise PgPairError(f"{error}\n--- {server.log.name} ---\n{_tail(server.log)}") from None

    def _pg_ctl(self, server: PgServer, *args, timeout: float) -> None:
        self._run([PG_BIN / "pg_ctl", *args[:1], "-D", server.data, *args[1:]], timeout=timeout)

    def _run(self, command: list, timeout: float) -> None:
        """Run ``command`` as the postgres user, with this process as the owner in its
        environment (inherited by the servers pg_ctl starts), in a session of its own
        (a Ctrl-C meant for pytest does not reach the servers)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update({OWNER_VAR: _owner_token(), DIR_VAR: str(self.directory),
                    "HOME": str(self.directory), "LC_ALL": "C"})
        result = subprocess.run([str(part) for part in command], env=env, cwd=self.directory,
                                user=self._uid, group=self._gid, extra_groups=[],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=timeout, start_new_session=True, check=False)
        if result.returncode != 0:
            raise PgPairError(f"{Path(str(command[0])).name} {' '.join(map(str, command[1:]))} "
                              f"exited {result.returncode}: "
                              f"{(result.stderr or result.stdout).strip()}")

    def _wait(self, predicate, what: str) -> None:
        """``lab.waiting.wait_for`` on a server still starting: any exception is "not
        yet" (the last one named); PgPairError after ``startup_timeout``."""
        wait_for(predicate, self.startup_timeout, what, _POLL_INTERVAL, error=PgPairError,
                 ignoring=(Exception,))


# -- leftovers of earlier runs ---------------------------------------------------------------

def reap_leftovers(base_dir: str | os.PathLike[str] | None = None) -> list[int]:
    """Stop servers of pairs whose owning process is gone and remove their directories
    (and orphaned ones in ``base_dir``, the temporary directory by default); returns the
    pids signalled."""
    signalled = []
    for pid, env in _postgres_environments():
        owner = env.get(OWNER_VAR)
        if owner is None or _owner_alive(owner):
            continue
        signalled += _kill_owned(env.get(DIR_VAR, ""))
    root = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
    for directory in root.glob(f"{DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if not _owner_alive((directory / "owner").read_text()):
                shutil.rmtree(directory, ignore_errors=True)
    return signalled


def _kill_owned(directory: str) -> list[int]:
    """Stop every postgres process started for ``directory``: SIGQUIT (an immediate
    shutdown, which releases its shared memory), then SIGKILL what lingers."""
    def pids():
        return [pid for pid, env in _postgres_environments() if env.get(DIR_VAR) == directory]
    found = pids()
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        for pid in pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids() and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)
        if not pids():
            break
    if directory.startswith(tempfile.gettempdir()) and Path(directory).name.startswith(DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
    return found


def _postgres_environments() -> list[tuple[int, dict[str, str]]]:
    """``(pid, environment)`` of every ``postgres`` process whose environment names a
    pair of these tests (the machine's own cluster has none)."""
    return [(pid, env) for pid, env, _ in process_environments("postgres")
            if OWNER_VAR in env]


# -- small helpers -----------------------------------------------------------------------

def _free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _RESERVED_PORTS:
            return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(unreadable: {error})"

