"""Stopping and starting the machine's libvirtd (run as root without systemd, see
DESIGN.md), for tests of what the agent does while it is away.

Only the machine's daemon is signalled (the one whose pid ``libvirtd -d`` wrote), not
every libvirtd: the benchmarks run session libvirtds of their own, which ``pkill -x
libvirtd`` would also end (and wait for). And a daemon that has exited counts as gone
while it is still a zombie: PID 1 on these machines reaps orphans on whole-second
ticks, 1 to 2 s late, and ``pgrep`` counts a zombie as running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from lab.waiting import wait_for

PIDFILE = "/run/libvirtd.pid"  # written by ``libvirtd -d``


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, reaped or not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _pid() -> int | None:
    try:
        with open(PIDFILE) as f:
            pid = int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None
    return None if _exited(pid) else pid


def stop() -> float:
    """SIGTERM the machine's libvirtd and wait until it has exited; returns the moment
    of the signal (``time.monotonic()``): its clients see their connections closed
    within milliseconds of it, as the process's sockets close when it exits."""
    pid = _pid()
    signalled = time.monotonic()
    if pid is None:
        return signalled
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _exited(pid), timeout=30, interval=0.05, message="libvirtd to exit")
    return signalled


def start() -> None:
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: subprocess.run(["virsh", "-c", "test+unix:///default", "version"],
                                    capture_output=True).returncode == 0,
             timeout=30, interval=0.05, message="libvirtd to answer")


def restart() -> None:
    stop()
    subprocess.run(["libvirtd", "-d"], check=True)
