"""Events, faults and inventories -> wire notifications. Pure."""

from __future__ import annotations

import datetime
import functools
from typing import NamedTuple, Optional

from lifecycle_common import timeutil
from lifecycle_common.wire import Notification, limits, payloads
from lifecycle_common.wire.envelope import new_notification
from lifecycle_common.wire.vocabulary import HEARTBEAT, INVENTORY, publisher_id  # noqa: F401
from lifecycle_common.wire.vocabulary import Fault
from lifecycle_common import libvirt_codes
from lifecycle_publisher import translation
from lifecycle_publisher.domain_event import DomainEvent, DomainFault, Inventory
from lifecycle_common.libvirt_codes import code_name


def _oslo_timestamp(iso: str) -> str:
    """oslo.messaging's notifier stamps str(utcnow()): naive UTC, space-separated.
    ``iso`` is timeutil.isoformat's UTC form, 2026-11-25T08:54:44.123456+00:00."""
    return f"{iso[:10]} {iso[11:26]}"


class TranslatedFields(NamedTuple):
    """The fields of an event's payload that follow from ``(event, detail, observed,
    previous)`` alone: its translation and libvirt's names for its codes."""

    event_type: str
    transition: str
    power_state: Optional[str]
    libvirt_event: str
    libvirt_detail: str
    libvirt_state: Optional[str]
    libvirt_reason: Optional[int]
    migration_job: Optional[str]


def translated_fields(event: int, detail: int, observed: translation.Observed | None,
                      previous: translation.Transition | None) -> TranslatedFields:
    """Translate the event and name its codes (the plain way: see
    ``cached_translated_fields``)."""
    result = translation.translate(event, detail, observed, previous)
    read = observed is not None and observed.state is not None
    return TranslatedFields(
        event_type=result.transition.event_type,
        transition=result.transition.value,
        power_state=result.power_state.value if result.power_state else None,
        libvirt_event=libvirt_codes.event_name(event),
        libvirt_detail=libvirt_codes.detail_name(event, detail),
        libvirt_state=libvirt_codes.state_name(observed.state) if read else None,
        libvirt_reason=observed.reason if read else None,
        migration_job=libvirt_codes.job_name(observed.job) if observed is not None else None)


@functools.lru_cache(maxsize=4096)  # a storm repeats a handful of combinations
def cached_translated_fields(event: int, detail: int, observed: translation.Observed | None,
                             previous: translation.Transition | None) -> TranslatedFields:
    """``translated_fields``, each combination computed once: translating and naming
    the codes cost 3.1 µs an event, a cache hit 0.4 µs (CPU time on this project's
    2-core VM, timeit; the whole of instance_notification and encode: ``python -m
    benchmarks.micro_agent encode``). Pure, so the cache changes nothing but the time;
    tests/unit/test_encoding_equivalence.py checks it against the plain function."""
    return translated_fields(event, detail, observed, previous)


_build_lifecycle_payload = payloads.frozen_dataclass_builder(payloads.InstanceLifecyclePayload)


def instance_notification(host: str, epoch: int, event: DomainEvent,
                          observed: translation.Observed | None = None,
                          previous: translation.Transition | None = None) -> Notification:
    """``observed``: the domain as read after the event (None: not read); ``previous``:
    the domain's previous transition on this host (None: not known)."""
    fields = cached_translated_fields(event.event, event.detail, observed, previous)
    occurred = timeutil.isoformat_epoch(event.occurred_at)
    payload = _build_lifecycle_payload({
        "uuid": event.uuid,
        "name": limits.clip_name(event.name),
        "host": host,
        "epoch": epoch,
        "seq": event.seq,
        "occurred_at": occurred,
        "transition": fields.transition,
        "power_state": fields.power_state,
        "libvirt_event": fields.libvirt_event,
        "libvirt_detail": fields.libvirt_detail,
        "libvirt_event_code": event.event,
        "libvirt_detail_code": event.detail,
        "libvirt_state": fields.libvirt_state,
        "libvirt_reason": fields.libvirt_reason,
        "migration_job": fields.migration_job,
    })
    return new_notification(event_type=fields.event_type, payload=payload,
                            publisher_id=publisher_id(host),
                            timestamp=_oslo_timestamp(occurred))


def fault_fields(fault: Fault, codes: tuple) -> dict:
    """The fields of a fault's payload beyond the common ones, from the callback's own
    arguments (``DomainFault.codes``): codes named (``unknown_<code>`` when this agent
    does not know one), libvirt's free text clipped to what the wire takes (a device
    alias, a path or a reason labels the fault: cut rather than the fault refused)."""
    if fault is Fault.WATCHDOG:
        (action,) = codes
        return {"action": code_name(libvirt_codes.WatchdogAction, action)}
    if fault is Fault.IO_ERROR:
        path, device, action, reason = codes
        return {"device": limits.clip_text(device or "", limits.FAULT_TEXT_LENGTH),
                "path": limits.clip_text(path or "", limits.FAULT_PATH_LENGTH),
                "action": code_name(libvirt_codes.IOErrorAction, action),
                "reason": limits.clip_text(reason or "", limits.FAULT_TEXT_LENGTH)}
    if fault is Fault.MEMORY_FAILURE:
        recipient, action, flags = codes
        return {"recipient": code_name(libvirt_codes.MemoryFailureRecipient, recipient),
                "action": code_name(libvirt_codes.MemoryFailureAction, action),
                "action_required": bool(flags & libvirt_codes.MemoryFailureFlag.ACTION_REQUIRED),
                "recursive": bool(flags & libvirt_codes.MemoryFailureFlag.RECURSIVE)}
    if fault is Fault.GUEST_AGENT:
        state, reason = codes
        return {"state": code_name(libvirt_codes.AgentLifecycleState, state),
                "reason": code_name(libvirt_codes.AgentLifecycleReason, reason)}
    return {}  # a reboot, a control error: nothing more than that it happened


def fault_notification(host: str, epoch: int, fault: DomainFault) -> Notification:
    """A fault, or the summary of a storm of one (``fault.count`` occurrences, the first
    at ``fault.first_occurred_at``; seq and time the last's)."""
    occurred = timeutil.isoformat_epoch(fault.occurred_at)
    first = (occurred if fault.first_occurred_at is None
             else timeutil.isoformat_epoch(fault.first_occurred_at))
    payload = payloads.FAULT_PAYLOADS[fault.fault](
        uuid=fault.uuid, name=limits.clip_name(fault.name), host=host, epoch=epoch,
        seq=fault.seq, occurred_at=occurred, first_occurred_at=first, count=fault.count,
        **fault_fields(fault.fault, fault.codes))
    return new_notification(event_type=fault.fault.event_type, payload=payload,
                            publisher_id=publisher_id(host), timestamp=_oslo_timestamp(occurred))


def inventory_notification(host: str, epoch: int, inventory: Inventory) -> Notification:
    occurred = timeutil.isoformat_epoch(inventory.occurred_at)
    entries = tuple(
        payloads.InventoryEntry(
            uuid=d.uuid, name=limits.clip_name(d.name),
            power_state=translation.power_state_of(d.state, d.reason).value,
            libvirt_state=libvirt_codes.state_name(d.state), libvirt_reason=d.reason)
        for d in inventory.domains)
    payload = payloads.HostInventoryPayload(
        host=host, epoch=epoch, seq=inventory.seq, occurred_at=occurred,
        reason=inventory.reason, instances=entries, new_state=inventory.new_state)
    return Notification(event_type=INVENTORY, payload=payload,
                        publisher_id=publisher_id(host), timestamp=_oslo_timestamp(occurred))


def heartbeat_notification(host: str, epoch: int, last_seq: int, interval: float,
                           status: str, libvirt_connected: bool,
                           now: datetime.datetime | None = None) -> Notification:
    now = timeutil.isoformat(now or timeutil.utcnow())
    payload = payloads.HostHeartbeatPayload(
        host=host, epoch=epoch, last_seq=last_seq, occurred_at=now,
        interval=interval, status=status, libvirt_connected=libvirt_connected)
    return Notification(event_type=HEARTBEAT, payload=payload,
                        publisher_id=publisher_id(host), timestamp=_oslo_timestamp(now))
