"""How the CLI shows a fault in one line: the compact text of ``events list``'s and
``events tail``'s ``detail`` column, and of ``instance list``'s ``last_fault`` cell.
Pure: the JSON outputs carry the fields themselves; these texts are for the eye.
"""

from __future__ import annotations

from typing import Optional

from lifecycle_common.wire import vocabulary

# Left out of the one-line text: a disk's source path can be 4096 characters long, and
# the device's alias already names the disk (the JSON outputs keep the path).
_LEFT_OUT = frozenset({"path"})
# Keys of a fault object (``{count, **fields}``, as ``events list`` and ``events tail``
# print it) that are not the fault's own fields.
_NOT_FIELDS = frozenset({"count"})


def detail(fields: dict, count: Optional[int] = None) -> str:
    """``virtio-disk0 pause enospc x37``: the fault's own fields' values in the
    payload's order (a boolean by its name when true, left out when false: a bare
    ``yes`` would not say what), and ``xN`` when the notification stands for N > 1
    occurrences (the agent coalesced a storm). Short enough for ``events tail``'s
    fixed-width row; the JSON outputs name every field."""
    parts = [_text(k, v) for k, v in fields.items() if k not in _LEFT_OUT and v is not False]
    if count is not None and count > 1:
        parts.append(f"x{count}")
    return " ".join(parts)


def fault_detail(fault: Optional[dict]) -> Optional[str]:
    """``detail`` of a fault object ``{"count": N, **fields}``; None for no fault."""
    if fault is None:
        return None
    return detail({k: v for k, v in fault.items() if k not in _NOT_FIELDS}, fault.get("count"))


def short_type(event_type: str) -> str:
    """``io_error`` for ``instance.io_error``."""
    prefix = vocabulary.INSTANCE_PREFIX
    return event_type[len(prefix):] if event_type.startswith(prefix) else event_type


def last_fault_cell(last_fault: Optional[dict]) -> Optional[str]:
    """``io_error 2026-11-25 08:55:16``: what ``instance list``'s table shows of an
    instance's last fault (its type and when, to the second, UTC); None for none."""
    if not last_fault:
        return None
    when = str(last_fault.get("occurred_at") or "")[:19].replace("T", " ")
    return f"{short_type(str(last_fault.get('event_type')))} {when}".strip()


# The keys of ``last_fault`` that are not the fault's own fields (consumer/fold.py
# writes them beside the fields).
_LAST_FAULT_KEYS = frozenset({"event_type", "occurred_at", "first_occurred_at", "count",
                              "host", "epoch", "seq"})


def last_fault_text(last_fault: Optional[dict]) -> Optional[str]:
    """What ``instance show``'s table shows of the last fault: its type, when, and its
    fields, ``instance.io_error at 2026-11-25T08:55:16.414567+00:00: virtio-disk0 ...``."""
    if not last_fault:
        return None
    fields = {k: v for k, v in last_fault.items() if k not in _LAST_FAULT_KEYS}
    text = detail(fields, last_fault.get("count"))
    head = f"{last_fault.get('event_type')} at {last_fault.get('occurred_at')}"
    return f"{head}: {text}" if text else head


def _text(key: str, value) -> str:
    return key if value is True else str(value)
