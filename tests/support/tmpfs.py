"""A real full disk for a test (``lab.tmpfs``), skipped where it cannot be mounted (not
root), or failed under CI=true."""

from __future__ import annotations

import contextlib
import os

import pytest

from lab import tmpfs
from lab.tmpfs import fill, free_bytes, unmount  # noqa: F401 - the tests' tmpfs.fill, ...


@contextlib.contextmanager
def small_tmpfs(path: str, size: str = "2m"):
    """Mount a tmpfs of ``size`` on ``path`` (created if need be) for the block."""
    try:
        tmpfs.mount(path, size)
    except tmpfs.MountError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        yield path
    finally:
        tmpfs.unmount(path)
