"""``events list`` and ``instance show``: what the journal says happened.

The journal holds one row per message applied (events and inventories; heartbeats only
update their host), with its outcome: ``applied``, ``stale`` (older than what the
database holds) or ``ignored``. It is pruned after ``[consumer] journal_retention``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys

from lifecycle_common import timeutil
from consumer.cli import tables
from consumer.cli.listing import INSTANCE_FIELDS
from consumer.db import queries

EVENT_COLUMNS = ["applied_at", "occurred_at", "host", "seq", "event_type", "instance_uuid",
                 "instance_name", "outcome"]
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
    listing.add_argument("--limit", type=positive_int, default=100,
                         help="the newest this many events (default 100)")
    listing.add_argument("--format", choices=["table", "json"], default="table")


def add_instance_show(sub) -> None:
    show = sub.add_parser("show", help="one instance's row and its last events")
    show.add_argument("uuid", metavar="UUID")
    show.add_argument("--events", type=int, default=20, metavar="N",
                      help="how many of its last events to show (default 20; 0: none)")
    show.add_argument("--format", choices=["table", "json"], default="table")


def events_list(conf, engine) -> int:
    c = conf.command
    rows = queries.list_events(engine, instance=c.only_instance, host=c.only_host,
                               since=c.since, limit=c.limit)
    if c.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(tables.table(rows, EVENT_COLUMNS, right=["seq"]))
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
    if c.format == "json":
        print(json.dumps({**row, "events": events}, indent=2))
        return 0
    print(tables.key_values(row, INSTANCE_FIELDS))
    if c.events > 0:
        print(f"\nlast {len(events)} events (of at most {c.events}), oldest first:")
        print(tables.table(events, [c for c in EVENT_COLUMNS if c not in
                                    ("instance_uuid", "instance_name")], right=["seq"]))
    return 0
