"""libvirt's lifecycle event, detail and domain state codes, and the codes the fault
events carry (watchdog and I/O error actions, ...), as Enums.

The values are libvirt's stable ABI (``virDomainEventType``, ``virDomainEvent*DetailType``,
``virDomainState`` and its reasons); keeping them here lets the agent's translation and
the consumer's reasons (``consumer.state_reasons``) stay pure and testable without the
libvirt module.
"""

from __future__ import annotations

import enum


class Event(enum.IntEnum):
    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class DefinedDetail(enum.IntEnum):
    ADDED = 0
    UPDATED = 1
    RENAMED = 2
    FROM_SNAPSHOT = 3


class UndefinedDetail(enum.IntEnum):
    REMOVED = 0
    RENAMED = 1


class StartedDetail(enum.IntEnum):
    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4


class SuspendedDetail(enum.IntEnum):
    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6
    POSTCOPY = 7
    POSTCOPY_FAILED = 8


class ResumedDetail(enum.IntEnum):
    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2
    POSTCOPY = 3
    POSTCOPY_FAILED = 4


class StoppedDetail(enum.IntEnum):
    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6


class ShutdownDetail(enum.IntEnum):
    FINISHED = 0
    GUEST = 1
    HOST = 2


class PMSuspendedDetail(enum.IntEnum):
    MEMORY = 0
    DISK = 1


class CrashedDetail(enum.IntEnum):
    PANICKED = 0
    CRASHLOADED = 1


DETAILS = {
    Event.DEFINED: DefinedDetail,
    Event.UNDEFINED: UndefinedDetail,
    Event.STARTED: StartedDetail,
    Event.SUSPENDED: SuspendedDetail,
    Event.RESUMED: ResumedDetail,
    Event.STOPPED: StoppedDetail,
    Event.SHUTDOWN: ShutdownDetail,
    Event.PMSUSPENDED: PMSuspendedDetail,
    Event.CRASHED: CrashedDetail,
}


class DomainState(enum.IntEnum):
    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class ShutoffReason(enum.IntEnum):
    """``virDomainShutoffReason``: why a domain is shut off."""

    UNKNOWN = 0
    SHUTDOWN = 1
    DESTROYED = 2
    CRASHED = 3
    MIGRATED = 4
    SAVED = 5
    FAILED = 6
    FROM_SNAPSHOT = 7
    DAEMON = 8


class RunningReason(enum.IntEnum):
    """``virDomainRunningReason``."""

    UNKNOWN = 0
    BOOTED = 1
    MIGRATED = 2
    RESTORED = 3
    FROM_SNAPSHOT = 4
    UNPAUSED = 5
    MIGRATION_CANCELED = 6
    SAVE_CANCELED = 7
    WAKEUP = 8
    CRASHED = 9
    POSTCOPY = 10
    POSTCOPY_FAILED = 11


class PausedReason(enum.IntEnum):
    """``virDomainPausedReason``."""

    UNKNOWN = 0
    USER = 1
    MIGRATION = 2
    SAVE = 3
    DUMP = 4
    IOERROR = 5
    WATCHDOG = 6
    FROM_SNAPSHOT = 7
    SHUTTING_DOWN = 8
    SNAPSHOT = 9
    CRASHED = 10
    STARTING_UP = 11
    POSTCOPY = 12
    POSTCOPY_FAILED = 13
    API_ERROR = 14


class ShutdownReason(enum.IntEnum):
    """``virDomainShutdownReason``."""

    UNKNOWN = 0
    USER = 1


class CrashedReason(enum.IntEnum):
    """``virDomainCrashedReason``."""

    UNKNOWN = 0
    PANICKED = 1


class NoReason(enum.IntEnum):
    """The reason of a state libvirt gives none for (``virDomainBlockedReason``,
    ``virDomainPMSuspendedReason``): unknown."""

    UNKNOWN = 0


# Each state's reasons.
STATE_REASONS = {
    DomainState.RUNNING: RunningReason,
    DomainState.BLOCKED: NoReason,
    DomainState.PAUSED: PausedReason,
    DomainState.SHUTDOWN: ShutdownReason,
    DomainState.SHUTOFF: ShutoffReason,
    DomainState.CRASHED: CrashedReason,
    DomainState.PMSUSPENDED: NoReason,
}


# Plain dicts: names are looked up for every event, and Enum calls are slow.
_EVENT_NAMES = {int(e): e.name for e in Event}
_DETAIL_NAMES = {(int(e), int(d)): d.name for e, details in DETAILS.items() for d in details}
_STATE_NAMES = {int(s): s.name for s in DomainState}


def event_name(code: int) -> str:
    return _EVENT_NAMES.get(code) or f"UNKNOWN_{code}"


def detail_name(event: int, detail: int) -> str:
    return _DETAIL_NAMES.get((event, detail)) or f"UNKNOWN_{detail}"


def state_name(code: int) -> str:
    return _STATE_NAMES.get(code) or f"UNKNOWN_{code}"


class JobType(enum.IntEnum):
    """``virDomainJobType``: the migration job's state, read after SUSPENDED/MIGRATED."""

    NONE = 0
    BOUNDED = 1
    UNBOUNDED = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


def job_name(code: int | None) -> str | None:
    if code is None:
        return None
    try:
        return JobType(code).name
    except ValueError:
        return f"UNKNOWN_{code}"


# -- the codes of the fault events (notifications.fault_notification names them) -----

class WatchdogAction(enum.IntEnum):
    """``virDomainEventWatchdogAction``: what the hypervisor did when the watchdog fired."""

    NONE = 0
    PAUSE = 1
    RESET = 2
    POWEROFF = 3
    SHUTDOWN = 4
    DEBUG = 5
    INJECT_NMI = 6


class IOErrorAction(enum.IntEnum):
    """``virDomainEventIOErrorAction``: what the hypervisor did on a failed disk request."""

    NONE = 0
    PAUSE = 1
    REPORT = 2


class MemoryFailureRecipient(enum.IntEnum):
    """``virDomainMemoryFailureRecipientType``: whom the hardware memory error hit."""

    HYPERVISOR = 0
    GUEST = 1


class MemoryFailureAction(enum.IntEnum):
    """``virDomainMemoryFailureActionType``: what was done about it."""

    IGNORE = 0
    INJECT = 1
    FATAL = 2
    RESET = 3


class MemoryFailureFlag(enum.IntFlag):
    """``virDomainMemoryFailureFlags``."""

    ACTION_REQUIRED = 1
    RECURSIVE = 2


class AgentLifecycleState(enum.IntEnum):
    """``virConnectDomainEventAgentLifecycleState``."""

    CONNECTED = 1
    DISCONNECTED = 2


class AgentLifecycleReason(enum.IntEnum):
    """``virConnectDomainEventAgentLifecycleReason``."""

    UNKNOWN = 0
    DOMAIN_STARTED = 1
    CHANNEL = 2


def code_name(codes: type[enum.IntEnum], code: int) -> str:
    """A fault code's name as the wire has it: lower case (``inject_nmi``), or
    ``unknown_<code>`` for a code this agent does not name (a newer libvirt's), so that
    the event is still published and says what it got. (A negative code, which libvirt
    does not send, is ``unknown_minus_<n>``: the wire's names have no '-'.)"""
    try:
        return codes(code).name.lower()
    except ValueError:
        return f"unknown_{code}" if code >= 0 else f"unknown_minus_{-code}"
