"""A RabbitMQ cluster of a test's own: N nodes, each in a network namespace of a NetLab.

``RabbitCluster(3)`` makes a ``NetLab(["n1", "n2", "n3"])`` (exposed as ``.lab``, to
cut traffic: ``cluster.lab.partition([["n1"], ["n2", "n3"]])``) and runs node ``i``
(1-based) as ``rabbit@<lab id>-n<i>`` in namespace ``n<i>``, from the Debian package's
scripts (DESIGN.md, "A RabbitMQ node or cluster of your own"):

- each namespace has its own network stack, so every node uses the standard ports:
  AMQP on ``0.0.0.0:5672``, epmd on 4369 and Erlang distribution on 25672 of its
  namespace address (epmd is started by the node itself, inside its namespace);
- each namespace's hosts file (``/etc/netns/<ns>/hosts``) maps every node's hostname to
  its namespace address, so node names resolve the same way everywhere;
- ``cluster_partition_handling = pause_minority``, a short ``net_ticktime`` (default
  6 s, so a silent cut is noticed within about 6-8 s), an administrator of the
  cluster's own (no ``guest``), ``loopback_users = none``; one ``HOME`` holds the
  ``.erlang.cookie`` that every node (and the CLI tools) share.

Clients (agents, consumers, tests) run in the root namespace and reach node ``i`` at
``amqp_address(i)``; ``transport_url()`` lists every node for oslo.messaging/kombu.

The nodes' data, logs and configuration live in one temporary directory, removed by
``destroy()`` (idempotent, also at interpreter exit). The node VMs run inside the lab's
namespaces, so a leftover of a killed test session dies with its lab: ``start()`` first
reaps labs and cluster directories whose owner process is gone (``reap_leftovers()``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from lab import netlab
from lab.netlab import NetLab, NetLabError
from lab.rabbit_node import (RABBITMQ_BIN, RABBITMQ_SERVER, RABBITMQCTL, RabbitNodeError,
                             _excerpt, _owner_alive, _owner_token, admin_config_lines,
                             beam_pids, node_environment)
from lab.waiting import wait_for

AMQP_PORT = 5672
DIST_PORT = 25672
DIR_PREFIX = "lcn-rabbit-"
CLUSTER_VAR = "LIFECYCLE_TEST_CLUSTER"  # in every node's and CLI's environment
LOGS_VAR = "LIFECYCLE_TEST_CLUSTER_LOGS"  # where destroy() keeps the nodes' logs
RABBITMQ_DIAGNOSTICS = RABBITMQ_BIN / "rabbitmq-diagnostics"
EPMD = "epmd"

# What RabbitMQ 3.10 logs when a booting node's global:sync() is stuck (after 10 s).
# With Erlang >= 25.1 before RabbitMQ 3.10.10, its workaround sends messages that
# global ignores (rabbitmq-server#6034), so the node never finishes booting.
GLOBAL_HANG = "global hang workaround"
_POLL_INTERVAL = 0.2
T = TypeVar("T")


class RabbitClusterError(RabbitNodeError):
    """A cluster's node failed to start, join, stop, or a CLI command failed."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = _POLL_INTERVAL) -> T:
    """``lab.waiting.wait_for``, where an exception of the kinds a CLI call or a probe
    raises counts as "not yet": RabbitClusterError naming ``what`` (and the last such
    exception) once ``timeout`` seconds have passed."""
    return wait_for(predicate, timeout, what, interval, error=RabbitClusterError,
                    ignoring=(RabbitNodeError, NetLabError, OSError, KeyError, ValueError))


class _Node:
    """One node of a cluster: names, directory, launcher process."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        self.index = index
        self.member = f"n{index}"
        self.hostname = f"{cluster.lab.id}-{self.member}"
        self.node = f"rabbit@{self.hostname}"
        self.directory = cluster.directory / self.member
        self.log_dir = self.directory / "log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.node}.log"


class RabbitCluster:
    """``size`` clustered RabbitMQ nodes in namespaces of their own; ``start()`` it,
    ``destroy()`` it (or use it as a context manager). Nodes are numbered from 1."""

    def __init__(self, size: int = 3, *, net_ticktime: int = 6,
                 startup_timeout: float = 60.0,
                 base_dir: str | os.PathLike[str] | None = None,
                 keep_logs: str | os.PathLike[str] | None = None) -> None:
        """``keep_logs``: a directory where ``destroy()`` copies the nodes' logs (to
        ``<keep_logs>/<lab id>/n<i>/``) before removing them; by default
        ``$LIFECYCLE_TEST_CLUSTER_LOGS`` if set, else the logs go with the cluster."""
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.size = size
        self.net_ticktime = net_ticktime
        self.startup_timeout = startup_timeout
        self.lab = NetLab([f"n{i}" for i in range(1, size + 1)])
        self.admin_user = "admin"
        self.admin_password = secrets.token_urlsafe(16)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{self.lab.id}-",
                                               dir=base_dir))
        self.home = self.directory / "home"
        keep_logs = keep_logs or os.environ.get(LOGS_VAR)
        self.keep_logs = Path(keep_logs) if keep_logs else None
        self._nodes = {i: _Node(self, i) for i in range(1, size + 1)}
        self._lock = threading.RLock()
        self._started = False
        self._destroyed = False
        self.startup_seconds: float | None = None  # how long start() took
        # Nodes killed and started again because their boot hung in global:sync
        # (see ``wait_for_cluster``), in order: (node index, time.time()).
        self.hung_restarts: list[tuple[int, float]] = []
        self._prepare_directory()

    # -- names and addresses ---------------------------------------------------------------

    @property
    def indices(self) -> list[int]:
        return list(self._nodes)

    def node(self, i: int) -> str:
        """Node ``i``'s Erlang node name, ``rabbit@<hostname>``."""
        return self._get(i).node

    def hostname(self, i: int) -> str:
        return self._get(i).hostname

    def member(self, i: int) -> str:
        """Node ``i``'s member name in ``lab`` (``n<i>``)."""
        return self._get(i).member

    def log_file(self, i: int) -> Path:
        return self._get(i).log_file

    def amqp_address(self, i: int) -> tuple[str, int]:
        """Where clients in the root namespace reach node ``i``'s AMQP listener."""
        return self.lab.address(self.member(i)), AMQP_PORT

    def url(self, i: int, user: str | None = None, password: str | None = None) -> str:
        """kombu/py-amqp URL of node ``i`` (vhost ``/``), the administrator by default."""
        host, port = self.amqp_address(i)
        user, password = self._credentials(user, password)
        return f"amqp://{_quote(user)}:{_quote(password)}@{host}:{port}//"

    def transport_url(self, user: str | None = None, password: str | None = None,
                      order: Sequence[int] | None = None) -> str:
        """oslo.messaging ``transport_url`` listing the nodes (in ``order``, by default
        1..N), the administrator's credentials by default."""
        user, password = self._credentials(user, password)
        hosts = ",".join(f"{_quote(user)}:{_quote(password)}@{host}:{port}"
                         for host, port in map(self.amqp_address, order or self.indices))
        return f"rabbit://{hosts}/"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> RabbitCluster:
        """Make the lab, boot every node, join nodes 2..N to node 1 (``stop_app``,
        ``join_cluster``, ``start_app``), and wait until all N run clustered."""
        with self._lock:
            if self._destroyed:
                raise RabbitClusterError("this cluster was destroyed; make a new one")
            if self._started:
                return self
            self._started = True
        began = time.monotonic()
        reap_leftovers()
        atexit.register(self.destroy)
        try:
            self.lab.create()
            entries = {node.hostname: self.lab.address(node.member)
                       for node in self._nodes.values()}
            for node in self._nodes.values():
                self.lab.hosts_file(node.member, entries, hostname=node.hostname)
            for node in self._nodes.values():  # boots in parallel; joins one at a time
                self._launch(node)
            for i in self.indices:
                self._wait_booted(self._nodes[i], time.monotonic() + self.startup_timeout)
            first = self.node(1)
            for i in self.indices[1:]:
                self.ctl(i, "stop_app")
                self.ctl(i, "join_cluster", first)
                self.ctl(i, "start_app")
            self.wait_for_cluster()
            self.startup_seconds = time.monotonic() - began
            return self
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a short grace: their data is
        thrown away), destroy the lab (with any epmd or CLI left in it) and remove the
        cluster's directory. Safe to call more than once."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        try:
            self._halt(list(self._nodes.values()), grace=5.0)
        finally:
            try:
                self.lab.destroy()
            finally:
                self._keep_logs()
                shutil.rmtree(self.directory, ignore_errors=True)
                atexit.unregister(self.destroy)

    stop = destroy

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.destroy()

    # -- one node --------------------------------------------------------------------------

    def kill9(self, i: int) -> None:
        """SIGKILL node ``i``'s Erlang VM (epmd stays) and wait until it is gone."""
        node = self._get(i)
        pids = beam_pids(node.node)
        if not pids:
            raise RabbitClusterError(f"{node.node} has no running VM to kill")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._reap(node, timeout=10)

    def stop_node(self, i: int, timeout: float = 60.0) -> None:
        """Stop node ``i`` gracefully (``rabbitmqctl stop``) and wait for its VM to exit
        (SIGKILL if it lingers past ``timeout``)."""
        node = self._get(i)
        with contextlib.suppress(RabbitNodeError):
            self.ctl(i, "stop", timeout=timeout)
        try:
            self._reap(node, timeout=timeout)
        except RabbitClusterError:
            self._halt([node], grace=0)
            raise

    def start_node(self, i: int, timeout: float | None = None) -> None:
        """Start node ``i`` again (after ``kill9`` or ``stop_node``) and wait until it
        has booted, rejoined the cluster and sees, and is seen by, every running node
        (a node hung in global:sync meanwhile is restarted: see ``wait_for_cluster``)."""
        node = self._get(i)
        if beam_pids(node.node):
            raise RabbitClusterError(f"{node.node} is already running")
        if timeout is None:
            timeout = self.startup_timeout + 60
        deadline = time.monotonic() + timeout
        self._launch(node)
        self._wait_booted(node, deadline)
        self.wait_for_cluster(timeout=max(1.0, deadline - time.monotonic()),
                              restart_hung=True)

    def rolling_restart(self, timeout: float | None = None) -> dict[int, float]:
        """Restart each node in turn: stop it, start it, wait until every node runs
        clustered again. Returns each node's restart time in seconds."""
        durations = {}
        for i in self.indices:
            began = time.monotonic()
            self.stop_node(i)
            self.start_node(i, timeout=timeout)
            durations[i] = time.monotonic() - began
        return durations

    # -- CLI tools and status --------------------------------------------------------------

    def ctl(self, i: int, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -q -n NODE ARGS...`` inside node ``i``'s namespace against
        node ``i``; its output, or RabbitClusterError with its stderr."""
        return self._cli(RABBITMQCTL, i, args, timeout)

    def diagnostics(self, i: int, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmq-diagnostics -q -n NODE ARGS...``, as ``ctl``."""
        return self._cli(RABBITMQ_DIAGNOSTICS, i, args, timeout)

    def is_running(self, i: int, timeout: float = 15.0) -> bool:
        """Whether node ``i``'s VM is up and its RabbitMQ application runs (false while
        the node is paused by pause_minority, or down)."""
        if not beam_pids(self.node(i)):
            return False
        try:
            return self.ctl(i, "eval", "rabbit:is_running().", timeout=timeout).strip() == "true"
        except (RabbitNodeError, NetLabError):
            return False

    def cluster_status(self, i: int, timeout: float = 15.0) -> dict:
        """``cluster_status --formatter json`` as node ``i`` reports it."""
        return json.loads(self.ctl(i, "cluster_status", "--formatter", "json",
                                   timeout=timeout))

    def running_nodes(self, via: int | None = None) -> list[str]:
        """Running nodes as a reachable node whose RabbitMQ runs reports them (node
        ``via``, or the first such); RabbitClusterError if none answers."""
        errors = []
        for i in [via] if via is not None else self.indices:
            if not beam_pids(self.node(i)):
                errors.append(f"{self.node(i)}: down")
                continue
            try:
                if not self.is_running(i):
                    errors.append(f"{self.node(i)}: not running (paused?)")
                    continue
                return sorted(self.cluster_status(i)["running_nodes"])
            except (RabbitNodeError, NetLabError, KeyError, ValueError) as error:
                errors.append(f"{self.node(i)}: {error}")
        raise RabbitClusterError("no node reports running nodes: " + "; ".join(errors))

    def partitions(self) -> dict[str, list[str]]:
        """Partitions (node -> nodes it was cut from) that any reachable node reports."""
        found: dict[str, set[str]] = {}
        for i in self.indices:
            if not beam_pids(self.node(i)):
                continue
            with contextlib.suppress(RabbitNodeError, NetLabError, KeyError, ValueError):
                for node, others in (self.cluster_status(i).get("partitions") or {}).items():
                    found.setdefault(node, set()).update(others)
        return {node: sorted(others) for node, others in sorted(found.items())}

    def wait_for_cluster(self, nodes: Iterable[int] | None = None,
                         timeout: float = 60.0, *, restart_hung: bool = False) -> list[int]:
        """Wait until each of ``nodes`` (default: every node whose VM is up) runs and
        reports exactly those nodes as running.

        ``restart_hung``: a node whose log shows, meanwhile, that its boot is stuck in
        Erlang's ``global`` sync (RabbitMQ logs "Global hang workaround", see
        ``GLOBAL_HANG``) is killed and started again, once. Returns the nodes so
        restarted (always empty without ``restart_hung``)."""
        wanted = sorted(nodes) if nodes is not None else [
            i for i in self.indices if beam_pids(self.node(i))]
        expected = sorted(self.node(i) for i in wanted)
        deadline = time.monotonic() + timeout
        marks = {i: _size(self.log_file(i)) for i in wanted}
        restarted: list[int] = []

        def reports_all(i: int) -> bool:
            # cluster_status needs the rabbit app running (a paused node refuses it),
            # and its running_nodes include the node itself once it runs.
            try:
                return sorted(self.cluster_status(i)["running_nodes"]) == expected
            except (RabbitNodeError, NetLabError, KeyError, ValueError):
                return False

        while True:
            with ThreadPoolExecutor(max_workers=len(wanted) or 1) as pool:
                running = dict(zip(wanted, pool.map(reports_all, wanted)))
            if all(running.values()):
                return restarted
            if restart_hung:
                for i in wanted:
                    if not running[i] and i not in restarted and \
                            GLOBAL_HANG in _tail_since(self.log_file(i), marks[i]).lower():
                        self._restart_hung(i, deadline)
                        restarted.append(i)
            if time.monotonic() >= deadline:
                waiting = [i for i in wanted if not running[i]]
                logs = "\n".join(f"--- {self.node(i)} ---\n{_excerpt(self.log_file(i), tail=15)}"
                                 for i in waiting)
                raise RabbitClusterError(f"timed out after {timeout}s waiting for nodes "
                                         f"{expected} to run clustered; not yet: "
                                         f"{[self.node(i) for i in waiting]}\n{logs}")
            time.sleep(_POLL_INTERVAL)

    def heal(self, timeout: float = 90.0, *, restart_hung: bool = True) -> list[int]:
        """Remove every cut of ``lab`` and wait until every node whose VM is up runs
        clustered again (paused nodes resume by themselves); see ``wait_for_cluster``
        for ``restart_hung``. Returns the nodes that had to be restarted."""
        self.lab.heal()
        return self.wait_for_cluster(timeout=timeout, restart_hung=restart_hung)

    # -- internals -------------------------------------------------------------------------

    def _get(self, i: int) -> _Node:
        try:
            return self._nodes[i]
        except KeyError:
            raise ValueError(f"no node {i}: nodes are {self.indices}") from None

    def _credentials(self, user: str | None, password: str | None) -> tuple[str, str]:
        if user is None:
            return self.admin_user, self.admin_password
        if password is None:
            raise ValueError(f"a password for {user!r}")
        return user, password

    def _prepare_directory(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / ".erlang.cookie", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(16).upper())
        (self.directory / "owner").write_text(_owner_token())
        for node in self._nodes.values():
            for path in (node.log_dir, node.directory / "mnesia"):
                path.mkdir(parents=True, exist_ok=True)
            (node.directory / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
            (node.directory / "enabled_plugins").write_text("[].\n")
            (node.directory / "rabbitmq.conf").write_text("\n".join([
                f"listeners.tcp.1 = 0.0.0.0:{AMQP_PORT}",
                *admin_config_lines(self.admin_user, self.admin_password),
                "cluster_partition_handling = pause_minority",
                f"cluster_name = {self.lab.id}",
            ]) + "\n")

    def _environment(self, node: _Node) -> dict[str, str]:
        """This process's environment without RabbitMQ's and Erlang's variables, plus
        node ``node``'s own (for its server and the CLI tools run against it)."""
        address = self.lab.address(node.member)
        env = node_environment(node.node, node.directory, node.log_dir, self.home)
        ticktime = f"-kernel net_ticktime {self.net_ticktime}"
        interface = "{" + address.replace(".", ",") + "}"
        env.update({
            "RABBITMQ_NODE_PORT": str(AMQP_PORT),
            "RABBITMQ_DIST_PORT": str(DIST_PORT),
            # Distribution on the namespace's address only; the CLI tools must tick as
            # often as the nodes, or a node drops a CLI that waits quietly for a reply.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                f"-kernel inet_dist_use_interface {interface} {ticktime}",
            "RABBITMQ_CTL_ERL_ARGS": ticktime,
            # epmd (started by whichever VM comes first in the namespace) listens on
            # the namespace's address, where the other nodes look for this one.
            "ERL_EPMD_ADDRESS": f"127.0.0.1,{address}",
            CLUSTER_VAR: f"{self.lab.id} {_owner_token()}",
        })
        return env

    def _cli(self, script: Path, i: int, args: Sequence[str], timeout: float) -> str:
        node = self._get(i)
        command = [*self.lab.exec_prefix(node.member), str(script), "-q", "-n", node.node,
                   *args]
        try:
            result = netlab.run(command, timeout=timeout, check=False,
                                env=self._environment(node))
        except NetLabError as error:
            raise RabbitClusterError(str(error)) from None
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise RabbitClusterError(f"{script.name} {' '.join(args)} on {node.node} exited "
                                     f"{result.returncode}: {output}")
        return result.stdout

    def _launch(self, node: _Node) -> None:
        # Foreground mode, in a session of its own (a Ctrl-C meant for pytest does not
        # reach it); ``ip netns exec`` execs the script, which stays the VM's parent.
        with open(node.log_dir / "stdout.log", "ab") as output:
            node.process = subprocess.Popen(
                [*self.lab.exec_prefix(node.member), str(RABBITMQ_SERVER)],
                env=self._environment(node), cwd=node.directory, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_booted(self, node: _Node, deadline: float) -> None:
        """Poll the namespace's epmd until the node has registered, then
        ``await_startup`` for what is left of the deadline."""
        assert node.process is not None
        last_error = "the node never registered with epmd"
        while True:
            if node.process.poll() is not None:
                raise RabbitClusterError(self._failure(
                    node, f"exited {node.process.returncode} while starting"))
            if self._registered(node):
                remaining = max(1, int(deadline - time.monotonic()))
                try:
                    self.ctl(node.index, "await_startup", "--timeout", str(remaining),
                             timeout=remaining + 15)
                    return
                except RabbitNodeError as error:
                    last_error = str(error)
            if time.monotonic() >= deadline:
                raise RabbitClusterError(self._failure(
                    node, f"did not boot in time ({last_error})"))
            time.sleep(_POLL_INTERVAL)

    def _registered(self, node: _Node) -> bool:
        """Whether the node has registered with its namespace's epmd."""
        try:
            result = netlab.run([*self.lab.exec_prefix(node.member), EPMD, "-names"],
                                check=False, timeout=10)
        except NetLabError:  # timed out: a busy machine; ask again
            return False
        return f"name {node.node.split('@')[0]} at port {DIST_PORT}" in result.stdout

    def _reap(self, node: _Node, timeout: float) -> None:
        """Wait until node's VM and launcher are gone."""
        def gone() -> bool:
            launcher = node.process is not None and node.process.poll() is None
            return not launcher and not beam_pids(node.node)
        wait_until(gone, timeout, f"{node.node}'s VM to exit", interval=0.05)
        node.process = None

    def _halt(self, nodes: list[_Node], grace: float) -> None:
        """SIGTERM the nodes' VMs (RabbitMQ shuts down cleanly), SIGKILL after
        ``grace`` seconds; then reap their launchers."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            for node in nodes:
                for pid in beam_pids(node.node):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while any(beam_pids(node.node) for node in nodes) and time.monotonic() < deadline:
                time.sleep(0.05)
        for node in nodes:
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    if node.process.poll() is None:
                        os.killpg(node.process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
                node.process = None

    def _restart_hung(self, i: int, deadline: float) -> None:
        """Kill node ``i`` (its boot hangs) and boot it again: a fresh VM is a new
        connection for its peers' ``global``, which then syncs."""
        node = self._get(i)
        self.hung_restarts.append((i, time.time()))
        self.kill9(i)
        self._launch(node)
        self._wait_booted(node, max(deadline, time.monotonic() + self.startup_timeout))

    def _keep_logs(self) -> None:
        """Copy the nodes' logs to ``keep_logs`` (if set) before they are removed."""
        if self.keep_logs is None:
            return
        for node in self._nodes.values():
            with contextlib.suppress(OSError):
                shutil.copytree(node.log_dir, self.keep_logs / self.lab.id / node.member,
                                dirs_exist_ok=True)

    def _failure(self, node: _Node, what: str) -> str:
        parts = [f"--- {path.name} ---\n{_excerpt(path)}"
                 for path in (node.log_file, node.log_dir / "stdout.log") if path.exists()]
        return f"RabbitMQ node {node.node} {what}\n" + "\n".join(parts)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tail_since(path: Path, offset: int) -> str:
    """What was appended to ``path`` after its first ``offset`` bytes."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def reap_leftovers(base_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Destroy labs whose owner is gone (their nodes, epmd and CLI tools die with them)
    and remove cluster directories whose owner is gone; returns the labs reaped."""
    reaped = netlab.reap_leftovers()
    root = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
    for directory in root.glob(f"{DIR_PREFIX}*"):
        with contextlib.suppress(OSError):
            if not _owner_alive((directory / "owner").read_text()):
                shutil.rmtree(directory, ignore_errors=True)
    return reaped


def cluster_processes(lab_id: str | None = None) -> list[int]:
    """Pids of processes (node VMs, CLI tools, epmd) started for a cluster (lab
    ``lab_id``'s only, if given), found by the marker in their environment."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for item in (proc / "environ").read_bytes().split(b"\0"):
                if item.startswith(f"{CLUSTER_VAR}=".encode()):
                    value = item.split(b"=", 1)[1].decode(errors="replace")
                    if lab_id is None or value.split()[0] == lab_id:
                        found.append(int(proc.name))
                    break
    return found


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
