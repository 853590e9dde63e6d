"""How a notification changes an instance row. Pure: no I/O, table-tested.

The rules make applying idempotent and order-independent, so redeliveries and
competing consumers cannot move an instance backwards:
- from the host that wrote the row, an event applies only if its ``(epoch, seq)`` is
  greater than the row's (a duplicate or an older event changes nothing);
- from another host, only news that the guest now runs there (a start, a resume, an
  inventory listing it running) applies, and only if it occurred after the row's last
  event or the owner announced that the guest is leaving (a migration): the new host
  becomes the owner. Anything else from a host that no longer owns the instance (the
  source's own migration events, its late stop or undefine) is stale;
- an inventory is the truth for its host: each listed instance is set as an event with
  the inventory's ``(epoch, seq)`` would be, and an instance of that host missing from
  it, last changed before the inventory, is marked deleted.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Optional

from lifecycle_common.power_state import PowerState


class Outcome(str, enum.Enum):
    APPLIED = "applied"   # changed the database
    STALE = "stale"       # older than what the database holds: changed nothing
    IGNORED = "ignored"   # carries nothing to apply (e.g. libvirt event deliberately ignored)


@dataclasses.dataclass(frozen=True)
class InstanceRow:
    uuid: str
    name: str
    host: str
    power_state: str
    deleted: bool
    epoch: int
    seq: int
    last_event_type: str
    event_occurred_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one event (or one inventory entry) says about one instance."""

    uuid: str
    name: str
    host: str
    epoch: int
    seq: int
    occurred_at: datetime.datetime
    event_type: str
    power_state: Optional[str]   # None: the event does not change it
    deleted: bool
    runs_here: bool = False      # says the guest runs on obs.host: may move the owner


# The owner's last event said the guest is leaving: another host may take it at once.
DEPARTURES = frozenset({"instance.migrating", "instance.migrated"})


def is_newer(row: Optional[InstanceRow], obs: Observation) -> bool:
    if row is None:
        return True
    if row.host == obs.host:
        return (obs.epoch, obs.seq) > (row.epoch, row.seq)
    if obs.runs_here and row.last_event_type in DEPARTURES:
        return True
    if row.deleted:
        return obs.occurred_at > row.event_occurred_at
    return obs.runs_here and obs.occurred_at > row.event_occurred_at


def apply(row: Optional[InstanceRow], obs: Observation) -> tuple[Optional[InstanceRow], Outcome]:
    """The row after ``obs`` and whether it changed anything."""
    if not is_newer(row, obs):
        return row, Outcome.STALE
    if obs.power_state is not None:
        power_state = obs.power_state
    elif row is not None:
        power_state = row.power_state
    else:
        power_state = PowerState.PENDING.value
    return InstanceRow(
        uuid=obs.uuid, name=obs.name or (row.name if row else ""), host=obs.host,
        power_state=power_state, deleted=obs.deleted, epoch=obs.epoch, seq=obs.seq,
        last_event_type=obs.event_type, event_occurred_at=obs.occurred_at), Outcome.APPLIED


def vanished(row: InstanceRow, host: str, epoch: int, seq: int,
             occurred_at: datetime.datetime) -> Optional[InstanceRow]:
    """An instance of ``host`` that its inventory does not list: deleted, unless the row
    changed after the inventory was taken (or belongs to another host now)."""
    if row.deleted or row.host != host or (row.epoch, row.seq) >= (epoch, seq):
        return None
    return dataclasses.replace(row, deleted=True, epoch=epoch, seq=seq,
                               last_event_type="host.inventory", event_occurred_at=occurred_at)
