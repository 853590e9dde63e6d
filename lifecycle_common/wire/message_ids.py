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


# Each byte with the version (byte 6) or the RFC 4122 variant (byte 8) bits set.
_SET_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_SET_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))


def _uuid4_strings(raw: bytes) -> list[str]:
    """A version 4 UUID string for each 16 bytes of ``raw``, as ``uuid.UUID(bytes=...,
    version=4)`` spells it. The version and variant bits of every id are set by two
    ``bytes.translate`` over strided slices, and the whole batch goes to hex at once:
    0.93 us an id instead of 1.28 with a bytearray, two masks and a ``.hex()`` per id
    (256 ids a batch, this project's 2-core VM). tests/unit/test_message_ids.py checks
    it against ``uuid.UUID`` and against the per-id version (``_uuid4_strings_plain``)."""
    b = bytearray(raw)
    b[6::16] = b[6::16].translate(_SET_VERSION_4)
    b[8::16] = b[8::16].translate(_SET_VARIANT)
    h = b.hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
            f"{h[i + 20:i + 32]}" for i in range(0, len(h), 32)]


def _uuid4_strings_plain(raw: bytes) -> list[str]:
    """``_uuid4_strings`` one id at a time: the reference its test compares with."""
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
