"""libvirt ``(event, detail)``, and the domain as read after it, -> a transition and
Nova's power state. Pure; table-tested.

Edge first: ``translate(event, detail)`` says what the event means on its own.
Level next: given an ``Observed`` domain (its state, and for a migration its job, read
off libvirt's thread after the event), the power state is the one the domain really
has, so that a burst of events that the reader overtook still ends right. Migration
events never set a power state: a guest paused at the end of a live migration is not
a paused guest, and a guest that left for another host is not powered off.

``power_state`` is None where the event says nothing about whether the guest runs.
Unknown codes from a newer libvirt translate to ``Transition.IGNORED``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from lifecycle_common.power_state import PowerState
from lifecycle_common.wire.vocabulary import MIGRATION, Transition  # noqa: F401 (re-exported)
from lifecycle_common.libvirt_codes import (
    DefinedDetail, DomainState, Event, JobType, ShutoffReason, StartedDetail,
    StoppedDetail, SuspendedDetail, UndefinedDetail)


@dataclasses.dataclass(frozen=True)
class Translation:
    transition: Transition
    power_state: Optional[PowerState]


@dataclasses.dataclass(frozen=True)
class Observed:
    """The domain as read after the event. ``state`` None: the domain no longer exists.
    ``job`` is the migration job's type, read only for SUSPENDED/MIGRATED."""

    state: Optional[int]
    reason: int = 0
    job: Optional[int] = None


IGNORED = Translation(Transition.IGNORED, None)

# Events whose every detail means the same; the others are decided by detail below.
_BY_EVENT = {
    Event.STARTED: Translation(Transition.STARTED, PowerState.RUNNING),
    Event.SUSPENDED: Translation(Transition.PAUSED, PowerState.PAUSED),
    Event.RESUMED: Translation(Transition.RESUMED, PowerState.RUNNING),
    Event.SHUTDOWN: Translation(Transition.SHUTTING_DOWN, None),
    Event.PMSUSPENDED: Translation(Transition.SUSPENDED, PowerState.SUSPENDED),
    Event.CRASHED: Translation(Transition.CRASHED, PowerState.CRASHED),
}

_STOPPED_CRASHED = Translation(Transition.CRASHED, PowerState.CRASHED)
_STOPPED = Translation(Transition.STOPPED, PowerState.SHUTDOWN)
_MIGRATING = Translation(Transition.MIGRATING, None)
_JOB_UNDER_WAY = (JobType.BOUNDED, JobType.UNBOUNDED, JobType.COMPLETED)


@functools.lru_cache(maxsize=4096)
def translate(event: int, detail: int, observed: Optional[Observed] = None,
              previous: Optional[Transition] = None) -> Translation:
    """Translate one libvirt lifecycle event, with the domain as read after it and the
    previous transition of the same domain on this host, where known. Pure, so its
    answers are cached: a storm repeats a handful of combinations."""
    if event == Event.UNDEFINED and previous is Transition.MIGRATED:
        # The source host removing a guest that migrated away: not a deletion.
        return Translation(Transition.MIGRATED, None)
    edge = _edge(event, detail, observed)
    if (observed is None or observed.state is None or edge.transition in MIGRATION
            or edge.transition is Transition.IGNORED):
        return edge
    return Translation(edge.transition, power_state_of(observed.state, observed.reason))


def _edge(event: int, detail: int, observed: Optional[Observed]) -> Translation:
    try:
        kind = Event(event)
    except ValueError:
        return IGNORED
    if kind is Event.SUSPENDED:
        if detail == SuspendedDetail.POSTCOPY:
            return _MIGRATING
        if detail == SuspendedDetail.MIGRATED:
            # Also sent when a live migration fails: only a job under way or completed
            # means the guest is leaving; otherwise it is paused (as nova decides).
            if observed is not None and observed.job in _JOB_UNDER_WAY:
                return _MIGRATING
            return _BY_EVENT[kind]
    if kind is Event.STARTED and detail == StartedDetail.MIGRATED:
        return Translation(Transition.ARRIVING, None)
    if kind in _BY_EVENT:
        return _BY_EVENT[kind]
    if kind is Event.STOPPED:
        if detail == StoppedDetail.MIGRATED:
            return Translation(Transition.MIGRATED, None)
        # The guest's emulator died (FAILED) or the guest crashed: not a clean stop.
        if detail in (StoppedDetail.CRASHED, StoppedDetail.FAILED):
            return _STOPPED_CRASHED
        return _STOPPED
    if kind is Event.DEFINED:
        # A new definition is an inactive domain; an update or rename says nothing of power.
        if detail == DefinedDetail.ADDED:
            return Translation(Transition.DEFINED, PowerState.SHUTDOWN)
        return Translation(Transition.DEFINED, None)
    if kind is Event.UNDEFINED:
        # A rename undefines the old name and defines the new one under the same uuid.
        if detail == UndefinedDetail.RENAMED:
            return IGNORED
        return Translation(Transition.UNDEFINED, None)
    return IGNORED


def needs_job(event: int, detail: int) -> bool:
    """Whether translating this event needs the migration job read after it."""
    return event == Event.SUSPENDED and detail == SuspendedDetail.MIGRATED


_CRASHED_SHUTOFF_REASONS = (ShutoffReason.CRASHED, ShutoffReason.FAILED)

_STATE_TO_POWER = {
    DomainState.NOSTATE: PowerState.PENDING,
    DomainState.RUNNING: PowerState.RUNNING,
    DomainState.BLOCKED: PowerState.RUNNING,
    DomainState.PAUSED: PowerState.PAUSED,
    DomainState.SHUTDOWN: PowerState.SHUTDOWN,
    DomainState.SHUTOFF: PowerState.SHUTDOWN,
    DomainState.CRASHED: PowerState.CRASHED,
    DomainState.PMSUSPENDED: PowerState.SUSPENDED,
}


def power_state_of(state: int, reason: int = 0) -> PowerState:
    """Nova's power state for a libvirt domain state, as Nova's libvirt driver maps it,
    except that a guest shut off because it crashed or its emulator died is crashed."""
    if state == DomainState.SHUTOFF and reason in _CRASHED_SHUTOFF_REASONS:
        return PowerState.CRASHED
    try:
        return _STATE_TO_POWER[DomainState(state)]
    except ValueError:
        return PowerState.PENDING
