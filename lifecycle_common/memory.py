"""Process-wide memory settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os

LOG = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(count: int = 1) -> bool:
    """Let glibc's malloc keep at most ``count`` arenas; call before starting threads.

    glibc gives threads that allocate at the same time arenas of their own (up to
    eight per core), and memory freed in one arena is neither reused by the others nor
    given back. The agent's threads take turns under the GIL anyway, so more arenas
    buy nothing: one agent over 2,000 domains peaked at 87 MB RSS in an event burst
    with an arena per thread, 73 MB with one (benchmarks, publish scenario), at the
    same throughput. An operator's MALLOC_ARENA_MAX wins. Returns whether the limit
    was set (False off glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        LOG.debug("no glibc mallopt here: malloc arenas left as they are")
        return False
    return mallopt(M_ARENA_MAX, count) == 1


def freeze_startup_objects() -> None:
    """Move every object that exists now out of the garbage collector's sight: call
    once set up, before serving. A full collection walks every tracked object, most
    of them the modules, option tables, schemas and SQLAlchemy metadata loaded at
    start (77,000 in the consumer against some 20,000 made while serving); under the
    latency benchmark's load full collections of 16-26 ms in the process of agents
    and 40-75 ms in the consumer stalled the whole pipeline every few seconds.
    Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()
