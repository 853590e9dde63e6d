"""A real full disk: a small tmpfs mounted under a test's (or a benchmark run's)
directory, and a file that fills it to the last byte. The mount is always undone, also
when what used it fails; where it cannot be mounted (not root), MountError says why
(tests/support/tmpfs.py skips the test then, or fails it under CI=true)."""

from __future__ import annotations

import errno
import os
import subprocess
import time


class MountError(OSError):
    """The tmpfs could not be mounted (root is needed); the message says why."""


def mount(path: str, size: str = "2m") -> str:
    """Mount a tmpfs of ``size`` on ``path`` (created if need be); ``path``."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           path], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise MountError(f"cannot mount a tmpfs on {path} (root needed): "
                         f"{done.stderr.strip()}")
    return path


def unmount(path: str, timeout: float = 10.0) -> None:
    """Unmount ``path``, waiting for whatever still holds it (a process being
    stopped); detached lazily past ``timeout``, so that nothing stays mounted."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["umount", path], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 or not os.path.ismount(path):
            return
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", path], check=True, timeout=30)
            return
        time.sleep(0.1)  # polling a busy mount: the holder is going away


def fill(directory: str, name: str = "filler") -> str:
    """Write a file in ``directory`` until the filesystem has no byte left; its path."""
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    if os.write(fd, block) < chunk:
                        continue  # a short write: the next one tells
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path


def free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
