"""``events list`` and ``instance show``: what the journal says happened.

The journal holds one row per message applied (events, faults and inventories;
heartbeats only update their host), with its outcome: ``applied``, ``stale`` (older
than what the database holds) or ``ignored``. The faults table holds what each fault
(and each panic) said; both are pruned after ``[consumer] journal_retention``.
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import re
import sys
from typing import Iterable

from lifecycle_common import timeutil
from lifecycle_common.wire import vocabulary
from consumer.cli import fault_views, tables, tail
from consumer.cli.listing import INSTANCE_FIELDS
from consumer.db import queries

EVENT_COLUMNS = ["applied_at", "occurred_at", "host", "seq", "event_type", "instance_uuid",
                 "instance_name", "outcome", "detail"]
FAULT_COLUMNS = ["occurred_at", "first_occurred_at", "count", "host", "seq", "event_type",
                 "detail"]
# Every event type the journal can hold (heartbeats only update their host; a type the
# consumer does not know is dead-lettered, never journaled).
JOURNALED_TYPES = frozenset(vocabulary.LIFECYCLE_EVENT_TYPES | vocabulary.FAULT_EVENT_TYPES
                            | {vocabulary.INVENTORY})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """The moment ``--since`` names: a duration before ``now`` (``90s``, ``30m``,
    ``1h30m``, ``2d``, ``1w``) or an ISO 8601 timestamp (UTC when it has no offset).
    ValueError says what is accepted."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        return now - datetime.timedelta(seconds=seconds)
    try:
        return timeutil.parse(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 1h, 2d, 1h30m) nor an "
                         "ISO 8601 timestamp (2026-12-10T08:00:00Z)") from None


def since_argument(text: str) -> datetime.datetime:
    """argparse's ``type`` for ``--since``."""
    try:
        return parse_since(text, timeutil.utcnow())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def journaled_types(globs: Iterable[str]) -> frozenset[str]:
    """The event types ``--type`` globs name (as ``events tail`` matches them: fnmatch,
    case-sensitive), among those the journal can hold: the query then asks for exact
    types, the same way on every database."""
    globs = tuple(globs)
    return frozenset(t for t in JOURNALED_TYPES
                     if any(fnmatch.fnmatchcase(t, glob) for glob in globs))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def add_events_list(sub) -> None:
    listing = sub.add_parser(
        "list", help="events from the journal, oldest first (the newest --limit of them)")
    listing.add_argument("--instance", dest="only_instance", metavar="UUID",
                         help="only events about this instance")
    listing.add_argument("--host", dest="only_host", metavar="NAME",
                         help="only events from this host")
    listing.add_argument("--since", type=since_argument, metavar="WHEN",
                         help="only events applied since WHEN: a duration before now "
                              "(30m, 1h, 2d, 1h30m) or an ISO 8601 timestamp")
    listing.add_argument("--type", dest="types", action="append", metavar="GLOB",
                         help="only these event types, globs such as 'instance.*' "
                              "(repeatable, or comma-separated)")
    listing.add_argument("--limit", type=positive_int, default=100,
                         help="the newest this many events (default 100)")
    listing.add_argument("--format", choices=["table", "json"], default="table")


def add_instance_show(sub) -> None:
    show = sub.add_parser("show", help="one instance's row, its last events and faults")
    show.add_argument("uuid", metavar="UUID")
    show.add_argument("--events", type=int, default=20, metavar="N",
                      help="how many of its last events to show (default 20; 0: none)")
    show.add_argument("--faults", type=int, default=20, metavar="N",
                      help="how many of its last faults to show (default 20; 0: none)")
    show.add_argument("--format", choices=["table", "json"], default="table")


def _with_detail(events: list[dict]) -> list[dict]:
    """Events as the table shows them: a fault's fields in one ``detail`` cell."""
    return [{**e, "detail": fault_views.fault_detail(e["fault"])} for e in events]


def events_list(conf, engine) -> int:
    c = conf.command
    types = tail.parse_types(c.types)
    rows = queries.list_events(engine, instance=c.only_instance, host=c.only_host,
                               since=c.since, limit=c.limit,
                               event_types=journaled_types(types) if types else None)
    if c.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(tables.table(_with_detail(rows), EVENT_COLUMNS, right=["seq"]))
    return 0


def instance_show(conf, engine) -> int:
    c = conf.command
    row = queries.get_instance(engine, c.uuid)
    if row is None:
        print(f"lifecycle-manage: no instance {tables.cell(c.uuid)} in the database",
              file=sys.stderr)
        return 1
    events = (queries.list_events(engine, instance=c.uuid, limit=c.events)
              if c.events > 0 else [])
    faults = queries.list_faults(engine, c.uuid, limit=c.faults) if c.faults > 0 else []
    if c.format == "json":
        print(json.dumps({**row, "events": events, "faults": faults}, indent=2))
        return 0
    print(tables.key_values({**row, "last_fault": fault_views.last_fault_text(row["last_fault"])},
                            INSTANCE_FIELDS))
    if c.events > 0:
        print(f"\nlast {len(events)} events (of at most {c.events}), oldest first:")
        print(tables.table(_with_detail(events),
                           [c for c in EVENT_COLUMNS if c not in
                            ("instance_uuid", "instance_name")], right=["seq"]))
    if c.faults > 0:
        print(f"\nlast {len(faults)} faults (of at most {c.faults}), oldest first:")
        print(tables.table([{**f, "detail": fault_views.detail(_own_fields(f)) or None}
                            for f in faults],
                           FAULT_COLUMNS, right=["count", "seq"]))
    return 0


def _own_fields(fault: dict) -> dict:
    """A fault of ``queries.list_faults`` less its columns: the fields it carries."""
    return {k: v for k, v in fault.items() if k not in queries.FAULT_KEYS}
