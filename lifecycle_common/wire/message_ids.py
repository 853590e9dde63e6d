"""Message ids: random (version 4) UUIDs, as ``uuid.uuid4`` makes them, from random
bytes read 256 ids at a time.

``uuid.uuid4`` reads 16 bytes from the OS per call: a system call, during which the
thread lets go of the GIL and must then wait to get it back from the agent's other
busy threads. At thousands of notifications a second that wait was a third of the
outbox writer's time.
"""

from __future__ import annotations

import os
import threading

_BATCH = 256


class RandomIds:
    """A thread-safe source of version 4 UUID strings."""

    def __init__(self, batch: int = _BATCH):
        self._batch = batch
        self._lock = threading.Lock()
        self._pool: list[str] = []

    def __call__(self) -> str:
        with self._lock:
            if not self._pool:
                self._pool = _uuid4_strings(os.urandom(16 * self._batch))
            return self._pool.pop()

    def forget(self) -> None:
        """Drop the ids drawn but not handed out (a forked child must not reuse them)."""
        with self._lock:
            self._pool = []


def _uuid4_strings(raw: bytes) -> list[str]:
    ids = []
    for start in range(0, len(raw), 16):
        b = bytearray(raw[start:start + 16])
        b[6] = b[6] & 0x0F | 0x40  # version 4
        b[8] = b[8] & 0x3F | 0x80  # RFC 4122 variant
        h = b.hex()
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids


new_message_id = RandomIds()
os.register_at_fork(after_in_child=new_message_id.forget)
