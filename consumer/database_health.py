"""What the consumer knows of its database, and the health check made of it. Pure: the
callers record what they met and say what time it is (``time.monotonic()``).

Two users of the database record what they met, each on its own: the consume loop's
attempts at batches and the host-liveness thread's passes. A lock held on the instances
holds batches while liveness, on the hosts, still works; neither hides the other.

- ``degraded``: either found the database unavailable, however long (the broker's
  queue keeps the messages, and a restart would not bring the database back), or the
  batch in hand has waited ``SLOW_AFTER`` seconds or more on it;
- ``failing``: a call to the database has not returned for ``failing_after`` seconds
  despite the timeouts (the consume loop, or the liveness thread, has stopped turning:
  a restart fixes that), or the liveness thread died.
"""

from __future__ import annotations

from typing import Optional

from lifecycle_common import health

NAME = "database"
SLOW_AFTER = 5.0  # seconds a batch may wait on the database before health says so


class Reachability:
    """Since when one user has found the database unavailable, and the error it met.
    One writer; readers take a consistent snapshot (one attribute holds both)."""

    def __init__(self) -> None:
        self._state: Optional[tuple[float, str]] = None

    def up(self) -> None:
        self._state = None

    def down(self, now: float, error: str) -> None:
        since = self._state[0] if self._state is not None else now
        self._state = (since, error)

    @property
    def down_since(self) -> Optional[float]:
        state = self._state
        return None if state is None else state[0]

    def snapshot(self) -> Optional[tuple[float, str]]:
        """``(down_since, error)``, or None while the database answers."""
        return self._state


class DatabaseHealth:
    """The database as the service met it. Each attribute has one writer: the consume
    loop (``batches``, ``batch_since``, ``batch_size``, ``call_since``) or the liveness
    thread (``liveness``, ``liveness_call_since``, ``liveness_failure``)."""

    def __init__(self) -> None:
        self.batches = Reachability()   # the last attempt at a batch
        self.liveness = Reachability()  # the last pass of host liveness
        self.batch_since: Optional[float] = None  # when the batch in hand began to apply
        self.batch_size = 0
        self.call_since: Optional[float] = None  # the consume loop's call in progress
        self.liveness_call_since: Optional[float] = None
        self.liveness_failure: Optional[str] = None  # the liveness thread died of it

    @property
    def down_since(self) -> Optional[float]:
        """Since when the database has been unavailable to one of its users (None:
        both reached it last time)."""
        times = [t for t in (self.batches.down_since, self.liveness.down_since) if t is not None]
        return min(times) if times else None

    def batch_began(self, now: float, size: int) -> None:
        self.batch_size = size
        self.batch_since = now

    def batch_ended(self) -> None:
        self.batch_since = None


def check(db: DatabaseHealth, now: float, failing_after: float) -> health.Check:
    """The ``database`` check of the consumer's health (module docstring)."""
    failing = []
    if db.liveness_failure is not None:
        failing.append(f"the host liveness thread died ({db.liveness_failure}): hosts are "
                       "no longer marked down")
    for since, who in ((db.call_since, "the consume loop"),
                       (db.liveness_call_since, "host liveness")):
        if since is not None and now - since >= failing_after:
            failing.append(f"a call to the database by {who} has not returned for "
                           f"{now - since:.1f}s despite the timeouts (failing after "
                           f"{failing_after:g}s)")
    if failing:
        return health.Check(NAME, health.Status.FAILING, "; ".join(failing))
    degraded = []
    for reachability, who in ((db.batches, ""), (db.liveness, "host liveness: ")):
        state = reachability.snapshot()
        if state is not None:
            since, error = state
            degraded.append(f"{who}unavailable for {max(0.0, now - since):.1f}s: {error}")
    batch_since = db.batch_since
    if batch_since is not None and now - batch_since >= SLOW_AFTER:
        degraded.append(f"a batch of {db.batch_size} has waited {now - batch_since:.1f}s "
                        "on the database (held, not acked)")
    if degraded:
        return health.Check(NAME, health.Status.DEGRADED, "the database: " + "; ".join(degraded))
    return health.Check(NAME, health.Status.OK, "the database: reachable")
