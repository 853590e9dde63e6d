"""The wire's words, in one place: event types, transitions, faults, the publisher prefix.

The agent writes them, the consumer, ``events tail`` and the tools read them; none of
them types one of these strings again. Event types are dotted names: ``instance.<word>``
for what one domain did (a lifecycle transition or a fault), ``host.<word>`` for what
the host says of itself.
"""

from __future__ import annotations

import enum

INSTANCE_PREFIX = "instance."
HOST_PREFIX = "host."

INVENTORY = "host.inventory"   # every domain of the host, read at one moment
HEARTBEAT = "host.heartbeat"   # the agent is alive

# ``publisher_id`` of every notification an agent sends: this, then its host.
PUBLISHER_PREFIX = "lifecycle-agent:"


def publisher_id(host: str) -> str:
    return PUBLISHER_PREFIX + host


class Transition(str, enum.Enum):
    """What a libvirt lifecycle event means for the instance (``instance.<value>``)."""

    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    PAUSED = "paused"
    RESUMED = "resumed"
    SHUTTING_DOWN = "shutting_down"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    CRASHED = "crashed"
    ARRIVING = "arriving"    # incoming migration started here; the source still owns it
    MIGRATING = "migrating"  # outgoing migration under way (the guest paused to finish it)
    MIGRATED = "migrated"    # the guest left this host for another
    IGNORED = "ignored"

    @property
    def event_type(self) -> str:
        return INSTANCE_PREFIX + self.value


# Transitions about a migration: they never carry a power state.
MIGRATION = frozenset({Transition.ARRIVING, Transition.MIGRATING, Transition.MIGRATED})
# Transitions that say the guest runs on the event's host: news that may move the
# instance's owner (consumer.apply_rules.is_newer). Their values, as payloads carry them.
RUNS_HERE = frozenset({Transition.STARTED.value, Transition.RESUMED.value})


class Fault(str, enum.Enum):
    """What else libvirt said of a domain, beside its lifecycle (``instance.<value>``):
    why it may be in its state. Each has a payload of its own (``payloads.FAULT_PAYLOADS``)."""

    REBOOTED = "rebooted"              # VIR_DOMAIN_EVENT_ID_REBOOT
    WATCHDOG = "watchdog"              # VIR_DOMAIN_EVENT_ID_WATCHDOG
    IO_ERROR = "io_error"              # VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON
    CONTROL_ERROR = "control_error"    # VIR_DOMAIN_EVENT_ID_CONTROL_ERROR
    MEMORY_FAILURE = "memory_failure"  # VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE
    GUEST_AGENT = "guest_agent"        # VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE

    @property
    def event_type(self) -> str:
        return INSTANCE_PREFIX + self.value


LIFECYCLE_EVENT_TYPES = frozenset(t.event_type for t in Transition)
FAULT_EVENT_TYPES = frozenset(f.event_type for f in Fault)
FAULTS_BY_EVENT_TYPE = {f.event_type: f for f in Fault}
# The faults an instance's ``last_fault`` names (with a panic, a CRASHED lifecycle
# event): not a reboot, nor the guest agent coming and going.
LAST_FAULT_TYPES = frozenset({Fault.WATCHDOG.event_type, Fault.IO_ERROR.event_type,
                              Fault.CONTROL_ERROR.event_type, Fault.MEMORY_FAILURE.event_type})
PANIC_EVENT_TYPE = Transition.CRASHED.event_type
