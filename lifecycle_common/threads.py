"""Threads whose names the operating system knows too (``top -H``, ``ps -L``,
/proc/<pid>/task/<tid>/comm), so that an operator can see which of the agent's or the
consumer's threads spends the CPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Callable

_PR_SET_NAME = 15
_COMM_LEN = 15  # the kernel keeps 16 bytes, the last one a NUL

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):  # not Linux: the Python name is all there is
    _prctl = None


def set_os_name(name: str) -> None:
    """Name the calling thread for the operating system, truncated to 15 bytes."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:_COMM_LEN]), 0, 0, 0)


def named_thread(target: Callable[[], object], name: str, daemon: bool = False) -> threading.Thread:
    """A thread called ``name`` in Python and, once it runs, in the operating system."""
    def run() -> None:
        set_os_name(name)
        target()
    return threading.Thread(target=run, name=name, daemon=daemon)
