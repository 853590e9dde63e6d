"""libvirt ``(event, detail)`` -> a transition and Nova's power state. Pure; table-tested.

``power_state`` is None where the event says nothing about whether the guest runs
(a configuration update, a guest that has begun to shut down but not yet stopped).
Unknown codes from a newer libvirt translate to ``Transition.IGNORED``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

from lifecycle_common.power_state import PowerState
from lifecycle_publisher.libvirt_codes import (
    DefinedDetail, DomainState, Event, StoppedDetail, UndefinedDetail)


class Transition(str, enum.Enum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    PAUSED = "paused"
    RESUMED = "resumed"
    SHUTTING_DOWN = "shutting_down"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    CRASHED = "crashed"
    IGNORED = "ignored"

    @property
    def event_type(self) -> str:
        return f"instance.{self.value}"


@dataclasses.dataclass(frozen=True)
class Translation:
    transition: Transition
    power_state: Optional[PowerState]


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


def translate(event: int, detail: int) -> Translation:
    """Translate one libvirt lifecycle event."""
    try:
        kind = Event(event)
    except ValueError:
        return IGNORED
    if kind in _BY_EVENT:
        return _BY_EVENT[kind]
    if kind is Event.STOPPED:
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


def power_state_of(state: int) -> PowerState:
    """Nova's power state for a libvirt domain state (as Nova's libvirt driver maps it)."""
    try:
        return _STATE_TO_POWER[DomainState(state)]
    except ValueError:
        return PowerState.PENDING
