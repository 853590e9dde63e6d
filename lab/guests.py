"""Real QEMU guests that misbehave on request, for the fault tests and the demo.

None of them needs a guest OS: each is 32 MiB of firmware and the one device that lets
the test provoke a fault from outside, through QEMU's monitor or the disk's server:

- ``guest_xml(name)``: the plain guest (``virsh reset`` gives a reboot event);
- ``watchdog_guest_xml``: an ib700 watchdog; ``arm_watchdog`` makes it fire at once;
- ``panic_guest_xml``: an ISA pvpanic device, crash kept; ``panic`` writes to it;
- ``nbd_disk_guest_xml``: the only disk is an NBD export that ``NbdErrorServer``
  (Debian's nbdkit with its error filter) fails with EIO, so the BIOS's first read
  pauses the guest;
- ``guest_agent_guest_xml``: a guest agent channel nobody answers on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

from lab.waiting import wait_for

EMULATOR = "/usr/bin/qemu-system-x86_64"
# ib700: writing the timeout index to port 0x443 arms it; 15 is the shortest (0 s).
WATCHDOG_PORT = 0x443
WATCHDOG_SHORTEST = 15
# pvpanic on the ISA bus: bit 0 written to its port says "guest panicked".
PANIC_PORT = 0x505
PANIC_PANICKED = 1
NBD_DISK_TARGET = "vda"
NBD_EXPORT = "failing-disk"
# Where the QEMU driver of the system libvirtd writes each guest's log.
QEMU_LOG_DIR = "/var/log/libvirt/qemu"


def domain_type() -> str:
    """KVM where /dev/kvm exists, else QEMU's TCG."""
    return "kvm" if os.path.exists("/dev/kvm") else "qemu"


def guest_xml(name: str, devices: str = "", *, on_crash: str | None = None,
              boot: str | None = None) -> str:
    """A real QEMU guest: 32 MiB, no display, no balloon; ``devices`` added to its
    <devices>, ``on_crash`` (libvirt's action for a panic) and ``boot`` (a boot device)
    only when given, so that the plain guest stays the plain guest."""
    os_boot = f"<boot dev='{boot}'/>" if boot else ""
    crash = f"<on_crash>{on_crash}</on_crash>" if on_crash else ""
    return (f"<domain type='{domain_type()}'><name>{name}</name><memory unit='MiB'>32</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type>{os_boot}</os>"
            f"{crash}<devices><emulator>{EMULATOR}</emulator>{devices}"
            "<video><model type='none'/></video><memballoon model='none'/></devices>"
            "</domain>")


def watchdog_guest_xml(name: str, action: str = "pause") -> str:
    """A guest with an ib700 watchdog whose firing makes libvirt ``action`` it."""
    return guest_xml(name, f"<watchdog model='ib700' action='{action}'/>")


def panic_guest_xml(name: str) -> str:
    """A guest with an ISA pvpanic device; a panic leaves it crashed (preserve), so
    libvirt reports Crashed/Panicked rather than destroying or restarting it."""
    return guest_xml(name, f"<panic model='isa'><address type='isa' iobase='{PANIC_PORT:#x}'/>"
                           "</panic>", on_crash="preserve")


def nbd_disk_guest_xml(name: str, port: int, host: str = "127.0.0.1",
                       export: str = NBD_EXPORT) -> str:
    """A guest booting from its only disk, the NBD export ``export`` at host:port,
    that pauses on a read or write error (error_policy and rerror_policy 'stop').

    The export is named on purpose: libvirt gives a disk's source name as the I/O
    error events' path, and without one (libvirt 9.0) it cannot send those events to
    its clients at all; they then see only the lifecycle event."""
    disk = ("<disk type='network' device='disk'>"
            "<driver name='qemu' type='raw' error_policy='stop' rerror_policy='stop'/>"
            f"<source protocol='nbd' name='{export}'><host name='{host}' port='{port}'/>"
            "</source>"
            f"<target dev='{NBD_DISK_TARGET}' bus='virtio'/></disk>")
    return guest_xml(name, disk, boot="hd")


def guest_agent_guest_xml(name: str) -> str:
    """A guest with a QEMU guest agent channel and no agent behind it: on its start
    libvirt reports the agent disconnected (reason: domain started)."""
    return guest_xml(name, "<controller type='virtio-serial' index='0'/>"
                           "<channel type='unix'><target type='virtio' "
                           "name='org.qemu.guest_agent.0'/></channel>")


def hmp(uri: str, name: str, command: str) -> None:
    """Run a human monitor command in the guest's QEMU (``virsh qemu-monitor-command
    --hmp``)."""
    subprocess.run(["virsh", "-q", "-c", uri, "qemu-monitor-command", "--hmp", name, command],
                   check=True, text=True, capture_output=True, timeout=60)


def arm_watchdog(uri: str, name: str) -> None:
    """Arm the guest's ib700 with its shortest timeout: it fires at once."""
    hmp(uri, name, f"o /b {WATCHDOG_PORT:#x} {WATCHDOG_SHORTEST}")


def panic(uri: str, name: str) -> None:
    """Tell the guest's pvpanic device that the guest panicked."""
    hmp(uri, name, f"o /b {PANIC_PORT:#x} {PANIC_PANICKED}")


def nbdkit_available() -> bool:
    return shutil.which("nbdkit") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NbdkitExited(RuntimeError):
    """nbdkit ended before it served (a port taken meanwhile, a bad argument)."""


class NbdErrorServer:
    """``nbdkit --filter=error memory 16M error=EIO error-rate=100%`` on a free
    loopback port: an NBD disk whose every read and write fails with EIO.

    A context manager: the server runs in the foreground as our child (and exits with
    us, --exit-with-parent, should we die without the ``with`` block's end), and is
    stopped on leaving the block, whatever happened in it."""

    def __init__(self, log_path: str | None = None, size: str = "16M"):
        self.log_path = log_path
        self.size = size
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "NbdErrorServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 10.0, attempts: int = 3) -> None:
        """Start nbdkit and wait until it accepts connections. The port is found free
        a moment before nbdkit binds it: another process may take it meanwhile, and
        then another free port is tried."""
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                return
            except NbdkitExited:
                if attempt == attempts - 1:
                    raise

    def _start_once(self, timeout: float) -> None:
        self.port = free_port()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                ["nbdkit", "--foreground", "--exit-with-parent", "--ipaddr", "127.0.0.1",
                 "--port", str(self.port), "--filter=error", "memory", self.size,
                 "error=EIO", "error-rate=100%"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            wait_for(self._answers, timeout, f"nbdkit to listen on 127.0.0.1:{self.port}",
                     interval=0.05)
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise NbdkitExited(f"nbdkit exited with {self.proc.returncode} "
                               f"(port {self.port}; see {self.log_path or 'its output'})")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def remove_guest(uri: str, name: str, timeout: float = 60.0) -> None:
    """Destroy and undefine the guest, until libvirt says it knows no such guest (tried
    again while libvirtd does not answer: a test elsewhere may be restarting it), then
    remove the log libvirtd's QEMU driver kept of it. Nothing of the guest is left
    behind; a guest already gone is no error; TimeoutError if it cannot be removed."""
    def gone() -> bool:
        for step in ("destroy", "undefine"):
            _virsh(uri, step, name)
        done = _virsh(uri, "domstate", name)
        return done.returncode != 0 and f"failed to get domain '{name}'" in done.stderr
    wait_for(gone, timeout, f"guest {name} to be destroyed and undefined", interval=0.5)
    if uri == "qemu:///system":
        try:
            os.remove(os.path.join(QEMU_LOG_DIR, f"{name}.log"))
        except OSError:
            pass  # never started


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True,
                          timeout=60)
