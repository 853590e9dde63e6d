"""What ``events tail`` shows of each message from the bus: a record read with the
wire's own decoder, whether it passes the filters, and its line. Pure: no I/O, and
nothing here raises on what a message holds (a body the decoder refuses is an
``unreadable`` record with the reason in ``error``).
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
from typing import Iterable, Optional

from consumer.cli import fault_views, tables
from lifecycle_common import timeutil, wire
from lifecycle_common.wire import vocabulary
from lifecycle_common.wire.payloads import (
    FAULT_PAYLOAD_CLASSES, HostHeartbeatPayload, HostInventoryPayload,
    InstanceLifecyclePayload, fault_fields)

HEARTBEAT = vocabulary.HEARTBEAT  # shown only when a --type names it
UNREADABLE = "unreadable"         # how the table shows a message the decoder refuses

# The table's columns and their widths (fixed: rows are printed as they come).
COLUMNS = {"seen_at": 15, "host": 18, "event_type": 22, "uuid": 36, "name": 20,
           "power_state": 11, "seq": 8, "detail": 32}
RIGHT = ("seq",)
# ANSI SGR codes of the power states (and of a message that cannot be read).
COLOURS = {"running": "32", "paused": "33", "suspended": "36", "shutdown": "2",
           "crashed": "1;31", "pending": "35", UNREADABLE: "31"}
# ANSI SGR codes of the faults' event types (and detail): red for what an instance's
# last_fault names (something went wrong with it), yellow for a reboot and the guest
# agent coming or going (worth a look, not a failure).
FAULT_COLOURS = {
    **{event_type: "31" for event_type in vocabulary.LAST_FAULT_TYPES},
    vocabulary.Fault.REBOOTED.event_type: "33",
    vocabulary.Fault.GUEST_AGENT.event_type: "33",
}


def parse_types(values: Optional[Iterable[str]]) -> tuple[str, ...]:
    """``--type`` given as often as wanted, each a glob or a comma-separated list."""
    return tuple(part.strip() for value in values or () for part in value.split(",")
                 if part.strip())


@dataclasses.dataclass(frozen=True)
class Filter:
    hosts: frozenset[str] = frozenset()      # empty: every host
    types: tuple[str, ...] = ()              # globs; empty: every type but heartbeats
    instance: Optional[str] = None

    def matches(self, record: dict) -> bool:
        event_type = record["event_type"]
        if event_type is None:  # unreadable: it can be told only when nothing is filtered
            return not (self.hosts or self.types or self.instance)
        if self.types:
            if not any(fnmatch.fnmatchcase(event_type, glob) for glob in self.types):
                return False
        elif event_type == HEARTBEAT:
            return False
        if self.hosts and record["host"] not in self.hosts:
            return False
        return self.instance is None or record["uuid"] == self.instance


def record(body: bytes | str, seen_at: datetime.datetime) -> dict:
    """The JSON object ``events tail --format json`` prints for one message."""
    out = {"event_type": None, "host": None, "uuid": None, "name": None,
           "power_state": None, "occurred_at": None, "seen_at": timeutil.isoformat(seen_at),
           "epoch": None, "seq": None, "instances": None, "fault": None, "error": None}
    try:
        note = wire.decode(body)
    except wire.WireError as exc:
        out["error"] = str(exc)
        return out
    except Exception as exc:  # noqa: BLE001 - whatever a hostile body makes decoding raise
        out["error"] = f"cannot be decoded: {type(exc).__name__}: {exc}"
        return out
    p = note.payload
    out.update(event_type=note.event_type, host=p.host, epoch=p.epoch,
               occurred_at=timeutil.isoformat(timeutil.parse(p.occurred_at)))
    if isinstance(p, InstanceLifecyclePayload):
        out.update(uuid=p.uuid, name=p.name, power_state=p.power_state, seq=p.seq)
    elif isinstance(p, FAULT_PAYLOAD_CLASSES):
        out.update(uuid=p.uuid, name=p.name, seq=p.seq,
                   fault={"count": p.count, **fault_fields(p)})
    elif isinstance(p, HostInventoryPayload):
        out.update(seq=p.seq, instances=len(p.instances))
    elif isinstance(p, HostHeartbeatPayload):
        out.update(seq=p.last_seq)
    return out


def cells(rec: dict) -> list[str]:
    """The table's cells for a record, in COLUMNS' order, sanitised."""
    unreadable = rec["event_type"] is None
    seen = timeutil.parse(rec["seen_at"]).strftime("%H:%M:%S.%f")
    name = rec["error"] if unreadable else rec["name"]
    if rec["instances"] is not None:
        name = f"({rec['instances']} instances)"
    values = [seen, rec["host"], UNREADABLE if unreadable else rec["event_type"], rec["uuid"],
              name, rec["power_state"], rec["seq"], fault_views.fault_detail(rec["fault"])]
    return [tables.cell(v) for v in values]


def styles(rec: dict) -> list[Optional[str]]:
    """Per cell, the ANSI colour of a terminal's row: the power state's, a fault's
    (its event type and detail), and red for a message that cannot be read."""
    out: list[Optional[str]] = [None] * len(COLUMNS)
    names = list(COLUMNS)
    if rec["event_type"] is None:
        out[names.index("event_type")] = COLOURS[UNREADABLE]
    elif rec["event_type"] in FAULT_COLOURS:
        colour = FAULT_COLOURS[rec["event_type"]]
        out[names.index("event_type")] = out[names.index("detail")] = colour
    elif rec["power_state"] in COLOURS:
        out[names.index("power_state")] = COLOURS[rec["power_state"]]
    return out


def use_colour(isatty: bool, environ) -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything (https://no-color.org)."""
    return isatty and not environ.get("NO_COLOR")
