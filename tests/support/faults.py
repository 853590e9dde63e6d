"""Fault notifications for tests, as an upgraded agent publishes them: the one builder
the fold's, the store's and the service's fault tests share."""

from __future__ import annotations

from typing import Optional

from lifecycle_common import timeutil, wire
from lifecycle_common.wire import payloads
from lifecycle_common.wire.envelope import new_notification
from lifecycle_common.wire.vocabulary import publisher_id


def fault_notification(event_type: str, seq: int, uuid: str, host: str, epoch: int,
                       t0: float, fields: dict, count: int = 1,
                       first: Optional[int] = None) -> wire.Notification:
    """A fault of ``event_type`` about ``uuid`` at ``t0 + seq`` (its first occurrence at
    ``t0 + first``: a storm's summary of ``count``), with the type's own ``fields``."""
    cls = payloads.payload_class_for(event_type)
    first = seq if first is None else first
    payload = cls(uuid=uuid, name="vm", host=host, epoch=epoch, seq=seq,
                  occurred_at=timeutil.isoformat_epoch(t0 + seq),
                  first_occurred_at=timeutil.isoformat_epoch(t0 + first), count=count,
                  **fields)
    return new_notification(event_type=event_type, payload=payload,
                            publisher_id=publisher_id(host), timestamp="2026-11-25 08:00:00")
