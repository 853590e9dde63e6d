"""Versioned payloads.

A payload is a frozen dataclass with a NAME and a ``MAJOR.MINOR`` VERSION. Adding an
optional field bumps the minor version; removing or changing a field bumps the major.
``tests/unit/test_wire_contract.py`` pins a fingerprint of every payload's fields, so a
field cannot change without its version changing.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from lifecycle_common.wire import vocabulary

NAMESPACE = "lifecycle"
OBJECT_KEY = "lifecycle_object"


@dataclasses.dataclass(frozen=True)
class InstanceLifecyclePayload:
    """One libvirt lifecycle event of one domain, translated."""

    NAME: typing.ClassVar[str] = "InstanceLifecyclePayload"
    # 1.0: the event, translated. 1.1: the domain's state and reason read after the
    # event, the migration job's type, and the migration transitions.
    VERSION: typing.ClassVar[str] = "1.1"

    uuid: str
    name: str
    host: str
    epoch: int
    seq: int
    occurred_at: str
    transition: str
    power_state: typing.Optional[str]
    libvirt_event: str
    libvirt_detail: str
    libvirt_event_code: int
    libvirt_detail_code: int
    libvirt_state: typing.Optional[str] = None
    libvirt_reason: typing.Optional[int] = None
    migration_job: typing.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class InventoryEntry:
    """One domain as listed in a host inventory."""

    uuid: str
    name: str
    power_state: str
    libvirt_state: str
    libvirt_reason: int


@dataclasses.dataclass(frozen=True)
class HostInventoryPayload:
    """Every domain a host has, read at one moment: the truth for that host."""

    NAME: typing.ClassVar[str] = "HostInventoryPayload"
    # 1.0: the listing. 1.1: new_state, true on the start inventory of a state that
    # had no epoch (the host starts over: its epoch is its newest, whatever its value).
    VERSION: typing.ClassVar[str] = "1.1"

    host: str
    epoch: int
    seq: int
    occurred_at: str
    reason: str
    instances: tuple[InventoryEntry, ...]
    new_state: bool = False


@dataclasses.dataclass(frozen=True)
class HostHeartbeatPayload:
    """The agent is alive; ``status`` says whether it is running, degraded (about to
    exit on a failure) or stopping cleanly."""

    NAME: typing.ClassVar[str] = "HostHeartbeatPayload"
    # 1.0: running, stopping. 1.1: degraded (a worker of the agent failed; the agent
    # is about to exit non-zero so that its supervisor restarts it).
    VERSION: typing.ClassVar[str] = "1.1"

    host: str
    epoch: int
    last_seq: int
    occurred_at: str
    interval: float
    status: str
    libvirt_connected: bool


# -- faults: why an instance is in its state ------------------------------------------
#
# Each fault event type has a payload of its own, all beginning with the same fields.
# ``count`` is how many occurrences the notification stands for: the agent publishes the
# first of a storm at once and coalesces the rest (lifecycle_publisher.fault_coalescing),
# so a notification may say "37 more, the first at first_occurred_at, the last at
# occurred_at"; ``seq`` is the last occurrence's.


@dataclasses.dataclass(frozen=True)
class _FaultFields:
    uuid: str
    name: str
    host: str
    epoch: int
    seq: int
    occurred_at: str
    first_occurred_at: str
    count: int


@dataclasses.dataclass(frozen=True)
class InstanceRebootedPayload(_FaultFields):
    """The guest reset itself (or was reset) without its emulator stopping."""

    NAME: typing.ClassVar[str] = "InstanceRebootedPayload"
    VERSION: typing.ClassVar[str] = "1.0"


@dataclasses.dataclass(frozen=True)
class InstanceWatchdogPayload(_FaultFields):
    """The guest's watchdog device fired; ``action`` is what the hypervisor did."""

    NAME: typing.ClassVar[str] = "InstanceWatchdogPayload"
    VERSION: typing.ClassVar[str] = "1.0"

    action: str


@dataclasses.dataclass(frozen=True)
class InstanceIOErrorPayload(_FaultFields):
    """A disk request failed: ``device`` (the disk's alias), ``path`` (its source),
    ``action`` (what the hypervisor did), ``reason`` (why, as the hypervisor says)."""

    NAME: typing.ClassVar[str] = "InstanceIOErrorPayload"
    VERSION: typing.ClassVar[str] = "1.0"

    device: str
    path: str
    action: str
    reason: str


@dataclasses.dataclass(frozen=True)
class InstanceControlErrorPayload(_FaultFields):
    """libvirt lost control of the domain's emulator (its monitor failed)."""

    NAME: typing.ClassVar[str] = "InstanceControlErrorPayload"
    VERSION: typing.ClassVar[str] = "1.0"


@dataclasses.dataclass(frozen=True)
class InstanceMemoryFailurePayload(_FaultFields):
    """The host reported a hardware memory error in the guest's pages."""

    NAME: typing.ClassVar[str] = "InstanceMemoryFailurePayload"
    VERSION: typing.ClassVar[str] = "1.0"

    recipient: str
    action: str
    action_required: bool
    recursive: bool


@dataclasses.dataclass(frozen=True)
class InstanceGuestAgentPayload(_FaultFields):
    """The guest agent connected or disconnected."""

    NAME: typing.ClassVar[str] = "InstanceGuestAgentPayload"
    VERSION: typing.ClassVar[str] = "1.0"

    state: str
    reason: str


FAULT_PAYLOADS = {
    vocabulary.Fault.REBOOTED: InstanceRebootedPayload,
    vocabulary.Fault.WATCHDOG: InstanceWatchdogPayload,
    vocabulary.Fault.IO_ERROR: InstanceIOErrorPayload,
    vocabulary.Fault.CONTROL_ERROR: InstanceControlErrorPayload,
    vocabulary.Fault.MEMORY_FAILURE: InstanceMemoryFailurePayload,
    vocabulary.Fault.GUEST_AGENT: InstanceGuestAgentPayload,
}
FaultPayload = typing.Union[tuple(FAULT_PAYLOADS.values())]  # type: ignore[valid-type]
FAULT_PAYLOAD_CLASSES = tuple(FAULT_PAYLOADS.values())
# The fields of each fault payload that say what happened (beyond the common ones).
_COMMON_FAULT_FIELDS = frozenset(f.name for f in dataclasses.fields(_FaultFields))


def fault_fields(payload) -> dict:
    """What a fault payload says beyond who, where, when and how many: ``{"action":
    "pause"}`` of a watchdog, ``{}`` of a reboot."""
    return {k: v for k, v in vars(payload).items() if k not in _COMMON_FAULT_FIELDS}


Payload = typing.Union[InstanceLifecyclePayload, HostInventoryPayload, HostHeartbeatPayload,
                       FaultPayload]
PAYLOAD_CLASSES = (InstanceLifecyclePayload, HostInventoryPayload, HostHeartbeatPayload,
                   *FAULT_PAYLOAD_CLASSES)
BY_NAME = {cls.NAME: cls for cls in PAYLOAD_CLASSES}
_BY_EVENT_TYPE = {
    vocabulary.INVENTORY: HostInventoryPayload,
    vocabulary.HEARTBEAT: HostHeartbeatPayload,
    **{fault.event_type: cls for fault, cls in FAULT_PAYLOADS.items()},
}


def payload_class_for(event_type: str):
    """The payload class an event type carries, or None for an unknown event type. An
    ``instance.`` type this code does not name is a lifecycle transition's (its payload
    then says whether it is one)."""
    cls = _BY_EVENT_TYPE.get(event_type)
    if cls is not None:
        return cls
    prefix = vocabulary.INSTANCE_PREFIX
    if event_type.startswith(prefix) and len(event_type) > len(prefix):
        return InstanceLifecyclePayload
    return None


def to_primitive(payload: Payload) -> dict:
    # A shallow copy of the instance's dict, which holds exactly its fields, in their
    # order: dataclasses.asdict deep-copies every value, which costs more than the
    # rest of building a notification.
    data = dict(vars(payload))
    if isinstance(payload, HostInventoryPayload):
        data["instances"] = [dict(vars(e)) for e in payload.instances]
    return {
        f"{OBJECT_KEY}.name": payload.NAME,
        f"{OBJECT_KEY}.namespace": NAMESPACE,
        f"{OBJECT_KEY}.version": payload.VERSION,
        f"{OBJECT_KEY}.data": data,
    }


def frozen_dataclass_builder(cls) -> Callable[[dict], Any]:
    """A function of a dict of ``cls``'s field values, in field order, that returns the
    instance ``cls(**values)`` would, without the frozen dataclass's ``__init__``
    (which sets each field through ``object.__setattr__``): the dict becomes the
    instance's ``__dict__``. For InstanceLifecyclePayload (15 fields) 1.2 microseconds
    where ``__init__`` takes 4.0; for Notification 0.6 where it takes 1.7
    (CPU time on this project's 2-core VM, benchmarks/micro_consumer.py; 5.1 against 1.3 for the agent's payload in benchmarks/micro_agent.py). Only for a frozen dataclass whose
    instances have a ``__dict__``, with every field set by ``__init__`` and no
    ``__post_init__``; for any other class, ``cls(**values)`` itself (a test checks
    both give equal instances with equal ``vars``)."""
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    params = getattr(cls, "__dataclass_params__", None)
    plain = (not fields or params is None or not params.frozen
             or hasattr(cls, "__post_init__") or "__slots__" in vars(cls)
             or any(not f.init for f in fields)
             or any(isinstance(f.type, dataclasses.InitVar) for f in fields))
    if plain:
        return lambda values: cls(**values)
    new, set_attribute = object.__new__, object.__setattr__

    def build(values: dict):
        instance = new(cls)
        set_attribute(instance, "__dict__", values)
        return instance
    return build


def from_data(cls, data: dict):
    """Build a payload from its already validated ``data`` (unknown keys dropped)."""
    if cls is HostInventoryPayload:
        entries = tuple(InventoryEntry(**_as_ints(InventoryEntry, known_fields(InventoryEntry, e)))
                        for e in data["instances"])
        return cls(**{**_as_ints(cls, known_fields(cls, data)), "instances": entries})
    return cls(**_as_ints(cls, known_fields(cls, data)))


def _as_ints(cls, data: dict) -> dict:
    """Integer fields as ints: JSON Schema's ``integer`` admits ``7.0``, and a float
    must not reach an integer column (PostgreSQL refuses ``7.0`` as a BIGINT)."""
    for name in _INT_FIELDS[cls]:
        value = data.get(name)
        if type(value) is float:
            data[name] = int(value)
    return data


def _int_fields(cls) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls)
                 if hints[f.name] in (int, typing.Optional[int]))


def known_data(cls, data: dict) -> dict:
    """``data`` of a newer minor version without the fields ``cls`` does not know, in
    nested entries too, so that it can be validated with the newest schema known."""
    known = known_fields(cls, data)
    if cls is HostInventoryPayload and isinstance(known.get("instances"), list):
        known["instances"] = [known_fields(InventoryEntry, e) if isinstance(e, dict) else e
                              for e in known["instances"]]
    return known


def known_fields(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


_INT_FIELDS = {cls: _int_fields(cls) for cls in (*PAYLOAD_CLASSES, InventoryEntry)}
