"""An extra RabbitMQ node of a test's own, beside the machine's broker.

``RabbitNode`` runs the Debian package's scripts from ``/usr/lib/rabbitmq/bin`` with an
environment of its own (DESIGN.md, "A RabbitMQ node or cluster of your own"): node
``lcetest-<hex>@localhost``, free ports on 127.0.0.1 for AMQP, AMQPS and Erlang
distribution, and one temporary directory holding its configuration, data, logs and
``HOME`` (with the ``.erlang.cookie``). The machine's broker (``rabbit@localhost``),
``/etc/rabbitmq`` and the shared epmd are left alone.

The node boots with an administrator of its own (``admin_user``/``admin_password``) and
no ``guest``. With a ``Pki`` it also listens for TLS (the client's certificate is
verified when one is sent) and offers EXTERNAL login, the user being the certificate's
common name (plugin ``rabbitmq_auth_mechanism_ssl``).

Every node records its owner (this process's pid and start time) in its environment
and directory; ``start()`` first reaps nodes and directories whose owner is gone, so a
test session that was killed does not leave nodes behind for long. ``stop()`` is
idempotent and also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

from lab.certs import Pki

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_SERVER = RABBITMQ_BIN / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN / "rabbitmqctl"

NAME_PREFIX = "lcetest-"
DIR_PREFIX = "lcetest-rabbit-"
OWNER_VAR = "LIFECYCLE_TEST_RABBIT_OWNER"
DIR_VAR = "LIFECYCLE_TEST_RABBIT_DIR"

# Ports never to pick: epmd, the machine's broker, and the CLI tools' distribution range.
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})
_POLL_INTERVAL = 0.05
# How a node's log says that a port picked for it was taken meanwhile.
_PORT_TAKEN = ("eaddrinuse", "dist_port_already_used")


class RabbitNodeError(RuntimeError):
    """A node failed to start or stop, or a ``rabbitmqctl`` command failed."""


def rabbitmq_installed() -> bool:
    """Whether the Debian package's server scripts and Erlang are on this machine."""
    return RABBITMQ_SERVER.exists() and RABBITMQCTL.exists() and shutil.which("erl") is not None


class RabbitNode:
    """One RabbitMQ node of its own on 127.0.0.1; ``start()`` it, ``stop()`` it (or use
    it as a context manager). ``home``: a directory shared by the nodes of one cluster
    (holding their common cookie); by default the node has its own."""

    def __init__(self, name: str | None = None, *, pki: Pki | None = None,
                 home: str | os.PathLike[str] | None = None,
                 base_dir: str | os.PathLike[str] | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.name = name or f"{NAME_PREFIX}{secrets.token_hex(4)}"
        if not self.name.startswith(NAME_PREFIX):
            raise ValueError(f"node names start with {NAME_PREFIX!r} (so leftovers can be "
                             f"reaped), not {self.name!r}")
        self.node = f"{self.name}@localhost"
        self.pki = pki
        self.startup_timeout = startup_timeout
        self.admin_user = "admin"
        self.admin_password = secrets.token_urlsafe(16)
        self.port = 0
        self.tls_port: int | None = None
        self.dist_port = 0
        self.directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base_dir))
        self.home = Path(home) if home is not None else self.directory / "home"
        self.log_dir = self.directory / "log"
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._prepare_directory()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> RabbitNode:
        """Start the node and wait (up to ``startup_timeout``) until it has booted;
        retries on fresh ports when a picked port was taken meanwhile."""
        if self._stopped:
            raise RabbitNodeError(f"{self.node} was stopped; make a new RabbitNode")
        if self._process is not None:
            return self
        reap_leftovers()
        atexit.register(self.stop)
        try:
            for attempt in range(1, 4):
                self._pick_ports()
                self._write_config()
                self._launch()
                try:
                    self._wait_until_booted()
                    return self
                except RabbitNodeError as error:
                    if attempt == 3 or not any(sign in str(error) for sign in _PORT_TAKEN):
                        raise
                    self._halt(grace=0)  # a port was taken meanwhile: pick others
            raise AssertionError("unreachable")
        except BaseException:
            self.stop()  # also on KeyboardInterrupt: never leave a half-started node
            raise

    def stop(self) -> None:
        """Stop the node (``rabbitmqctl stop``, then signals if its VM lingers) and
        remove its directory. Safe to call more than once, from any thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            asked = False
            if self._process is not None and self._process.poll() is None:
                with contextlib.suppress(RabbitNodeError, subprocess.TimeoutExpired):
                    self.ctl("stop", timeout=30)
                    asked = True
            self._halt(grace=15.0 if asked else 0.0)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            atexit.unregister(self.stop)

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the node's VM is alive (started and not yet stopped)."""
        return bool(beam_pids(self.node))

    # -- addresses -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """kombu/py-amqp URL of the plain listener, as the node's administrator."""
        return self.url_for(self.admin_user, self.admin_password)

    @property
    def transport_url(self) -> str:
        """oslo.messaging ``transport_url`` of the plain listener, as the administrator."""
        return (f"rabbit://{_quote(self.admin_user)}:{_quote(self.admin_password)}"
                f"@127.0.0.1:{self.port}/")

    def url_for(self, user: str, password: str, vhost: str = "/") -> str:
        """kombu/py-amqp URL of the plain listener for ``user`` on ``vhost``."""
        path = "/" if vhost == "/" else _quote(vhost)  # amqp://...//: the vhost "/"
        return f"amqp://{_quote(user)}:{_quote(password)}@127.0.0.1:{self.port}/{path}"

    @property
    def log_file(self) -> Path:
        """The node's own log file."""
        return self.log_dir / f"{self.node}.log"

    # -- rabbitmqctl -----------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -q -n NODE ARGS...`` against this node and return its
        output; RabbitNodeError with its stderr when it fails."""
        result = subprocess.run([str(RABBITMQCTL), "-q", "-n", self.node, *args],
                                env=self._environment(), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout, check=False)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise RabbitNodeError(f"rabbitmqctl {' '.join(args)} on {self.node} exited "
                                  f"{result.returncode}: {output}")
        return result.stdout

    def add_user(self, name: str, password: str | None = None) -> None:
        """Add ``name``; without a password it can log in only by certificate (EXTERNAL)."""
        self.ctl("add_user", name, password if password is not None else secrets.token_hex(16))
        if password is None:
            self.ctl("clear_password", name)

    def delete_user(self, name: str) -> None:
        self.ctl("delete_user", name)

    def set_permissions(self, user: str, configure: str, write: str, read: str,
                        vhost: str = "/") -> None:
        self.ctl("set_permissions", "-p", vhost, user, configure, write, read)

    def set_topic_permissions(self, user: str, exchange: str, write: str, read: str,
                              vhost: str = "/") -> None:
        self.ctl("set_topic_permissions", "-p", vhost, user, exchange, write, read)

    def add_vhost(self, name: str) -> None:
        self.ctl("add_vhost", name)

    def delete_vhost(self, name: str) -> None:
        self.ctl("delete_vhost", name)

    # -- internals ---------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        for path in (self.home, self.log_dir, self.directory / "mnesia"):
            path.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_hex(16).upper())
        (self.directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        plugins = "[rabbitmq_auth_mechanism_ssl]." if self.pki else "[]."
        (self.directory / "enabled_plugins").write_text(plugins + "\n")
        (self.directory / "owner").write_text(_owner_token())

    def _pick_ports(self) -> None:
        ports = _free_ports(3)
        self.port, self.dist_port = ports[0], ports[1]
        self.tls_port = ports[2] if self.pki else None

    def _write_config(self) -> None:
        lines = [f"listeners.tcp.1 = 127.0.0.1:{self.port}",
                 *admin_config_lines(self.admin_user, self.admin_password)]
        if self.pki is not None:
            lines += [
                f"listeners.ssl.1 = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {self.pki.ca_cert}",
                f"ssl_options.certfile = {self.pki.server_cert}",
                f"ssl_options.keyfile = {self.pki.server_key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
                "auth_mechanisms.1 = PLAIN",
                "auth_mechanisms.2 = AMQPLAIN",
                "auth_mechanisms.3 = EXTERNAL",
                "ssl_cert_login_from = common_name",
            ]
        (self.directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    def _environment(self) -> dict[str, str]:
        """This process's environment without RabbitMQ's and Erlang's variables, plus
        the node's own."""
        env = node_environment(self.node, self.directory, self.log_dir, self.home)
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update({
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback_dist,
            "RABBITMQ_CTL_ERL_ARGS": loopback_dist,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            OWNER_VAR: _owner_token(),
            DIR_VAR: str(self.directory),
        })
        return env

    def _launch(self) -> None:
        # Foreground mode: the script stays as the VM's parent, so an early exit shows.
        # Its own session: a Ctrl-C meant for pytest does not reach the node.
        with open(self.log_dir / "stdout.log", "ab") as output:
            self._process = subprocess.Popen(
                [str(RABBITMQ_SERVER)], env=self._environment(), cwd=self.directory,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def _wait_until_booted(self) -> None:
        """Poll until the distribution port answers (the node is registered with epmd),
        then ``await_startup`` for what is left of the deadline."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error = "the node never opened its distribution port"
        while True:
            if self._process.poll() is not None:
                raise RabbitNodeError(self._failure(f"exited {self._process.returncode} "
                                                    "while starting"))
            if _accepts(self.dist_port):
                remaining = max(1, int(deadline - time.monotonic()))
                try:
                    self.ctl("await_startup", "--timeout", str(remaining),
                             timeout=remaining + 15)
                    return
                except (RabbitNodeError, subprocess.TimeoutExpired) as error:
                    last_error = str(error)
            if time.monotonic() >= deadline:
                raise RabbitNodeError(self._failure(
                    f"did not boot within {self.startup_timeout}s ({last_error})"))
            time.sleep(_POLL_INTERVAL)

    def _halt(self, grace: float) -> None:
        """Make sure the node's VM and its launcher are gone: wait ``grace`` seconds for
        a stop already asked for, then SIGTERM (a clean shutdown), then SIGKILL."""
        for sig, wait in ((None, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                self._signal(sig)
            deadline = time.monotonic() + wait
            while self._alive() and time.monotonic() < deadline:
                time.sleep(_POLL_INTERVAL)
            if not self._alive():
                break
        if self._process is not None:
            self._process.wait(timeout=10)
        if beam_pids(self.node):
            raise RabbitNodeError(f"{self.node}'s VM survived SIGKILL")

    def _alive(self) -> bool:
        launcher = self._process is not None and self._process.poll() is None
        return launcher or bool(beam_pids(self.node))

    def _signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the launcher's process group (its own session: the script,
        the VM and its helpers) and to any VM of this node's name."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, sig)  # not yet reaped: its pid is not reused
        for pid in beam_pids(self.node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _failure(self, what: str) -> str:
        parts = [f"--- {path.name} ---\n{_excerpt(path)}"
                 for path in (self.log_file, self.log_dir / "stdout.log") if path.exists()]
        return f"RabbitMQ node {self.node} {what}\n" + "\n".join(parts)


# -- leftovers of earlier runs ---------------------------------------------------------------

def admin_config_lines(user: str, password: str) -> list[str]:
    """rabbitmq.conf lines every node of the tests' own has: an administrator of its
    own (no guest), logins from any address, logs to the file only."""
    return [
        "loopback_users = none",
        f"default_user = {user}",
        f"default_pass = {password}",
        "default_user_tags.administrator = true",
        "default_permissions.configure = .*",
        "default_permissions.write = .*",
        "default_permissions.read = .*",
        "log.console = false",
        "log.file.level = info",
    ]


def node_environment(node: str, directory: Path, log_dir: Path, home: Path) -> dict[str, str]:
    """This process's environment without RabbitMQ's and Erlang's variables, plus what
    puts node ``node``'s configuration, data and logs in ``directory`` (not in
    /etc/rabbitmq or /var/lib/rabbitmq), for its server and the CLI tools."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("RABBITMQ_", "ERL_")) and key != "NOTIFY_SOCKET"}
    env.update({
        "HOME": str(home),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        "RABBITMQ_CONFIG_FILES": str(directory / "conf.d"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(log_dir),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
    })
    return env


def reap_leftovers(base_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Kill test nodes whose owning process is gone and remove their directories (and
    orphaned ones in ``base_dir``, the temporary directory by default); returns the
    names of the nodes killed."""
    killed = []
    for pid, env, is_server in _beam_environments():  # CLI tools' VMs, too
        node = env.get("RABBITMQ_NODENAME", "")
        owner = env.get(OWNER_VAR)
        if not node.startswith(NAME_PREFIX) or owner is None or _owner_alive(owner):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if is_server:
            killed.append(node)
        directory = Path(env.get(DIR_VAR, ""))
        if directory.name.startswith(DIR_PREFIX):
            shutil.rmtree(directory, ignore_errors=True)
    root = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
    for directory in root.glob(f"{DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if not _owner_alive((directory / "owner").read_text()):
                shutil.rmtree(directory, ignore_errors=True)
    return killed


def _process_start_time(pid: int) -> str | None:
    """The start time of a live process (field 22 of /proc/PID/stat), which tells it
    from a later one with the same pid; None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields from 3 on (the name may hold spaces)
    return None if fields[0] in ("Z", "X") else fields[19]


def _owner_token() -> str:
    return f"{os.getpid()}:{_process_start_time(os.getpid())}"


def _owner_alive(token: str) -> bool:
    pid, _, started = token.strip().partition(":")
    return pid.isdigit() and _process_start_time(int(pid)) == started


def process_environments(comm: str) -> list[tuple[int, dict[str, str], bytes]]:
    """``(pid, environment, command line)`` of every process named ``comm`` readable
    here (a process that ends meanwhile is left out)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != comm:
                continue
            raw = (proc / "environ").read_bytes()
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                   if "=" in item)
        found.append((int(proc.name), env, command))
    return found


def _beam_environments() -> list[tuple[int, dict[str, str], bool]]:
    """``(pid, environment, is_server)`` of every ``beam.smp`` process readable here;
    ``is_server``: a RabbitMQ node's VM, not a CLI tool's (``rabbitmqctl`` runs one too)."""
    return [(pid, env, b"\0-s\0rabbit\0boot\0" in command)
            for pid, env, command in process_environments("beam.smp")]


def beam_pids(node: str) -> list[int]:
    """Pids of the Erlang VMs whose environment names ``node``: that node's VM."""
    return [pid for pid, env, is_server in _beam_environments()
            if is_server and env.get("RABBITMQ_NODENAME") == node]


# -- small helpers -----------------------------------------------------------------------

def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (held open together while picked)."""
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            if sock.getsockname()[1] in _RESERVED_PORTS:
                sock.close()
                continue
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _excerpt(path: Path, first_errors: int = 8, tail: int = 30) -> str:
    """The first error lines of a log (usually the cause) and its last lines."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"(unreadable: {error})"
    errors = [line for line in lines[:-tail] if "[error]" in line][:first_errors]
    return "\n".join([*errors, *(["..."] if errors else []), *lines[-tail:]])


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
