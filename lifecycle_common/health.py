"""Health: each service's checks, folded into one status an operator (and systemd's
watchdog) can act on. Pure: the callers say what they saw and what time it is.

- ``ok``: everything works.
- ``degraded``: something is wrong, and the service does what it can and recovers by
  itself once it is fixed: a dependency away or slow (libvirt, the broker, the
  database, a full disk), however long; an outbox that is late.
- ``failing``: something a restart would fix (a thread died, a loop stopped turning,
  an outbox that does not drain while the broker takes messages); ``/healthz``
  answers 503 and the systemd watchdog is no longer fed, so that systemd restarts the
  service. A dependency that is away is never failing: restarting every agent of a
  fleet while the broker is down would only leave libvirt unwatched.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Iterable, Optional


class Status(str, enum.Enum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Status.OK: 0, Status.DEGRADED: 1, Status.FAILING: 2}


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict:
        return {"status": self.status.value, "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class Report:
    checks: tuple[Check, ...]

    @property
    def status(self) -> Status:
        return max((c.status for c in self.checks), key=lambda s: s.rank, default=Status.OK)

    @property
    def failing(self) -> bool:
        return self.status is Status.FAILING

    def as_dict(self) -> dict:
        return {"status": self.status.value,
                "checks": {c.name: c.as_dict() for c in self.checks}}

    def summary(self) -> str:
        """One line: the status and what is not ok (systemd's STATUS=, logs)."""
        wrong = [f"{c.name}: {c.detail}" for c in self.checks if c.status is not Status.OK]
        return self.status.value + (f" ({'; '.join(wrong)})" if wrong else "")


def report(checks: Iterable[Check]) -> Report:
    return Report(tuple(checks))


class Outage:
    """Since when a dependency (libvirt, the broker, the database) has been unreachable.
    Thread-safe enough for its use: one writer per dependency, readers take a snapshot
    of one attribute."""

    def __init__(self, down_since: Optional[float]):
        self.down_since = down_since  # None: reachable

    def up(self) -> None:
        self.down_since = None

    def down(self, now: float) -> None:
        if self.down_since is None:
            self.down_since = now


def connection(name: str, what: str, down_since: Optional[float], now: float,
               meanwhile: str = "") -> Check:
    """A dependency the service reconnects to by itself (libvirt, the broker, the
    database): ok while up, degraded while down, however long; never failing, since a
    restart would not bring it back. ``meanwhile`` says what the service does about it."""
    if down_since is None:
        return Check(name, Status.OK, f"{what}: reachable")
    down_for = max(0.0, now - down_since)
    return Check(name, Status.DEGRADED, f"{what}: unreachable for {down_for:.1f}s"
                                        + (f"; {meanwhile}" if meanwhile else ""))


def age(name: str, what: str, age_seconds: Optional[float], degraded_after: float,
        failing_after: Optional[float], waiting_for: str = "") -> Check:
    """How old the oldest waiting item is (None: nothing waits). ``failing_after``
    None: never failing, for a wait on a dependency that is away (``waiting_for``
    names it), which a restart would not end."""
    if age_seconds is None:
        return Check(name, Status.OK, f"no {what} waiting")
    if failing_after is not None and age_seconds >= failing_after:
        status = Status.FAILING
    elif age_seconds >= degraded_after:
        status = Status.DEGRADED
    else:
        status = Status.OK
    if failing_after is None:
        bounds = f"degraded after {degraded_after:g}s; {waiting_for}"
    else:
        bounds = f"degraded after {degraded_after:g}s, failing after {failing_after:g}s"
    return Check(name, status, f"oldest {what} waiting for {age_seconds:.1f}s ({bounds})")


def threads(name: str, dead: Iterable[str], failure: Optional[str]) -> Check:
    """The service's worker threads: failing as soon as one died."""
    dead = sorted(dead)
    if failure is not None or dead:
        return Check(name, Status.FAILING, failure or f"thread(s) {', '.join(dead)} not alive")
    return Check(name, Status.OK, "all worker threads alive")
