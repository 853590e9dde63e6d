"""A wrong clock for a process under test: Debian's libfaketime, preloaded, with the
offset read from a file the test rewrites, so that a clock can be set ahead, behind,
or stepped mid-run (``FAKETIME_TIMESTAMP_FILE``, re-read on every call).

Only the wall clock (``time.time``) is faked: the monotonic clock stays true, as it does
when a real host's time is stepped, and Python's timed waits (on a monotonic deadline)
are left alone; faked, they hang, since libfaketime does not see the semaphore waits
Python's locks use. libfaketime 0.9.10 also answers EINVAL to an absolute sleep on
the true monotonic clock, which is how Python's ``time.sleep`` sleeps: the directory
``faketime_shim`` beside this file, put on the process's PYTHONPATH, holds a
``sitecustomize`` that makes ``time.sleep`` wait on an event instead (the same wait,
on the same monotonic clock).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

SHIM_DIR = Path(__file__).parent / "faketime_shim"


def library() -> str | None:
    """libfaketime's multithreaded build, where Debian's package puts it, or None."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


class FakeClock:
    """The wall clock of the processes started with ``env()``, ``offset`` seconds off
    the real one; ``set()`` steps it, at once, in every such process."""

    def __init__(self, directory: str | os.PathLike, offset: float = 0.0):
        lib = library()
        if lib is None:
            raise FileNotFoundError("libfaketime is not installed (apt-get install faketime)")
        self._lib = lib
        self.path = Path(directory) / "faketime-offset"
        self.set(offset)

    def set(self, offset: float) -> None:
        """Put the fake clock ``offset`` seconds ahead (negative: behind) of the real one."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset:+.3f}\n")
        os.replace(tmp, self.path)  # a reader never sees half a file
        self.offset = offset

    def env(self) -> dict[str, str]:
        """The environment a process needs to run on this clock."""
        path = os.environ.get("PYTHONPATH", "")
        return {
            "LD_PRELOAD": self._lib,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": f"{SHIM_DIR}{os.pathsep}{path}" if path else str(SHIM_DIR),
        }
