"""libvirtd daemons of the run's own, one per simulated compute host, as on a real host:
the agent talks to its libvirtd over the daemon's socket and the hypervisor's work
happens in the daemon, not in the agent's process.

Each is a session-mode ``libvirtd`` run as the unprivileged user ``nobody`` with its
own runtime, configuration and cache directories under the run's work directory, so
that it shares nothing with the machine's libvirtd (root's, on /var/run/libvirt). Its
``test+unix:///default?socket=...`` is a fake hypervisor shared by every client of that
daemon: a load process's ``virDomainSuspend`` there reaches the agent's callback as an
event, through the daemon. Its domains live while a client holds a connection, so the
daemon's holder (a connection of this process) defines them and stays open until the
daemon stops.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from benchmarks.harness import BenchError, wait_for
from benchmarks.hosts import domain_name, domain_uuid

USER = "nobody"


def domain_xml(host: str, index: int) -> str:
    return (f"<domain type='test'><name>{domain_name(host, index)}</name>"
            f"<uuid>{domain_uuid(host, index)}</uuid><memory>65536</memory>"
            "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")


class Daemon:
    """One session libvirtd holding ``domains`` running domains named after ``host``."""

    def __init__(self, workdir: str, host: str):
        self.host = host
        self.log_path = os.path.join(workdir, f"libvirtd-{host}.log")
        # Its directories where nobody can reach them (a work directory under a
        # root-only parent would not do), with a short socket path (108 bytes at most).
        self.dir = tempfile.mkdtemp(prefix=f"lifecycle-libvirtd-{host}-")
        self.runtime = os.path.join(self.dir, "run")
        self.socket = os.path.join(self.runtime, "libvirt", "libvirt-sock")
        self.uri = f"test+unix:///default?socket={self.socket}"
        self.proc: subprocess.Popen | None = None  # runuser, libvirtd's parent
        self._holder = None

    @property
    def pid(self) -> int:
        """libvirtd's own process id (from its pid file)."""
        with open(os.path.join(self.runtime, "libvirt", "libvirtd.pid")) as f:
            return int(f.read().strip())

    def start(self) -> "Daemon":
        user = pwd.getpwnam(USER)
        for sub in ("run", "home", "config", "cache"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        for root, dirs, _ in os.walk(self.dir):
            os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(self.dir, 0o755)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "HOME": os.path.join(self.dir, "home"), "XDG_RUNTIME_DIR": self.runtime,
               "XDG_CONFIG_HOME": os.path.join(self.dir, "config"),
               "XDG_CACHE_HOME": os.path.join(self.dir, "cache")}
        log = open(self.log_path, "ab")
        # In the foreground (no -d): this process is its parent and reaps it.
        self.proc = subprocess.Popen(["runuser", "-u", USER, "--", "libvirtd"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_for(lambda: os.path.exists(self.socket) or self.proc.poll() is not None, 30,
                 f"libvirtd of {self.host} to listen")
        if self.proc.poll() is not None:
            raise BenchError(f"libvirtd of {self.host} exited with {self.proc.returncode} "
                             f"(see {self.log_path})")
        return self

    def hold(self, domains: int) -> None:
        """Open the holder connection and define and start ``domains`` domains (the
        default domain ``test`` is removed: every domain is the run's)."""
        import libvirt
        conn = self._connect(libvirt)
        self._holder = conn
        for dom in conn.listAllDomains():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        for i in range(domains):
            conn.defineXML(domain_xml(self.host, i)).create()

    @staticmethod
    def _connect_error(exc) -> str:
        return str(exc).splitlines()[0]

    def _connect(self, libvirt):
        deadline = time.monotonic() + 30
        while True:
            try:
                return libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"libvirtd of {self.host}: {self._connect_error(exc)}") from exc
                time.sleep(0.05)

    def stop(self) -> None:
        if self._holder is not None:
            try:
                self._holder.close()
            except Exception:  # noqa: BLE001 - the daemon may be gone already
                pass
            self._holder = None
        try:
            pid = self.pid
        except (OSError, ValueError):
            pid = None
        if self.proc is not None and self.proc.poll() is None:
            # runuser passes SIGTERM on to libvirtd.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if pid is not None and not _gone(pid, timeout=30):
            os.kill(pid, signal.SIGKILL)
            _gone(pid, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ended (or is a zombie waiting to be reaped) within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def start_daemons(run, hosts: list[str], domains: int) -> list[Daemon]:
    """A daemon per host, each holding ``domains`` running domains; stopped at the
    run's clean-up."""
    daemons = []
    for host in hosts:
        daemon = Daemon(run.workdir, host)
        run.on_cleanup(daemon.stop)
        daemons.append(daemon.start())
    for daemon in daemons:
        daemon.hold(domains)
    return daemons
