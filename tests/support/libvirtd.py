"""Stopping and starting the machine's libvirtd (run as root without systemd, see
DESIGN.md), for tests of what the agent does while it is away."""

from __future__ import annotations

import subprocess

from tests.conftest import wait_for


def _running() -> bool:
    return subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0


def stop() -> None:
    subprocess.run(["pkill", "-x", "libvirtd"], check=False)
    wait_for(lambda: not _running(), timeout=30, interval=0.05, message="libvirtd to exit")


def start() -> None:
    subprocess.run(["libvirtd", "-d"], check=True)
    wait_for(lambda: subprocess.run(["virsh", "-c", "test+unix:///default", "version"],
                                    capture_output=True).returncode == 0,
             timeout=30, interval=0.05, message="libvirtd to answer")


def restart() -> None:
    stop()
    subprocess.run(["libvirtd", "-d"], check=True)
