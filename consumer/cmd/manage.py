"""``lifecycle-manage``: schema migrations and listing hosts and instances."""

from __future__ import annotations

import json
import sys

from oslo_config import cfg

from lifecycle_common import config as common
from consumer import config
from consumer.db import engine as db_engine
from consumer.db import migrate, queries

INSTANCE_COLUMNS = ["uuid", "name", "host", "host_status", "power_state", "deleted",
                    "event_occurred_at", "applied_at"]
HOST_COLUMNS = ["name", "status", "agent_status", "libvirt_connected", "last_heartbeat_at",
                "epoch", "last_seq"]


def _add_commands(subparsers):
    db = subparsers.add_parser("db", help="the database schema")
    db_sub = db.add_subparsers(dest="action")
    db_sub.required = True
    db_sub.add_parser("sync", help="create or upgrade the schema to the newest version")
    db_sub.add_parser("version", help="print the schema's current version")

    for name, helptext in (("instance", "instances"), ("host", "hosts")):
        parser = subparsers.add_parser(name, help=helptext)
        sub = parser.add_subparsers(dest="action")
        sub.required = True
        listing = sub.add_parser("list", help=f"list {helptext}")
        listing.add_argument("--format", choices=["table", "json"], default="table")
        if name == "instance":
            listing.add_argument("--host", dest="only_host", help="only this host's instances")
            listing.add_argument("--no-deleted", action="store_true",
                                 help="leave out deleted instances")


def make_conf(argv):
    conf = config.make_conf()
    conf.register_cli_opt(cfg.SubCommandOpt("command", handler=_add_commands))
    return config.load(argv, prog="lifecycle-manage", conf=conf)


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-manage", make_conf,
                           sys.argv[1:] if argv is None else argv, _run)


def _run(conf) -> int:
    engine = db_engine.create(conf.database.connection)
    command, action = conf.command.name, conf.command.action
    if command == "db":
        if action == "sync":
            migrate.sync(engine)
            print(f"database at revision {migrate.current(engine)}")
        else:
            print(migrate.current(engine) or "none")
        return 0
    if command == "instance":
        rows = queries.list_instances(engine, host=conf.command.only_host,
                                      include_deleted=not conf.command.no_deleted)
        columns = INSTANCE_COLUMNS
    else:
        rows = queries.list_hosts(engine)
        columns = HOST_COLUMNS
    if conf.command.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, columns))
    return 0


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
