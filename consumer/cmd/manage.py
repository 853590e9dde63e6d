"""``lifecycle-manage``: schema migrations, listing hosts and instances, and the state
of the consumers' queue on the broker."""

from __future__ import annotations

import json
import sys

import amqp
from oslo_config import cfg

from lifecycle_common import broker
from lifecycle_common import config as common
from consumer import config
from consumer.db import engine as db_engine
from consumer.db import migrate, queries
from consumer.topology import Topology

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

    queue = subparsers.add_parser("queue", help="the consumers' queue on the broker")
    queue_sub = queue.add_subparsers(dest="action")
    queue_sub.required = True
    status = queue_sub.add_parser(
        "status", help="messages waiting, consumers, and dead letters of [consumer] queue_name")
    status.add_argument("--format", choices=["table", "json"], default="table")

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
    command, action = conf.command.name, conf.command.action
    if command == "queue":
        return _queue_status(conf)
    engine = db_engine.create(conf.database.connection)
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


def _queue_status(conf) -> int:
    """The queue and its dead-letter queue, read with passive declares (which change
    nothing and need no permission beyond reaching the vhost)."""
    queue = conf.consumer.queue_name
    topology = Topology(exchange=conf.control_exchange, queue=queue, routing_key="")
    settings = broker.settings(conf)
    try:
        conn, connected_to = broker.Connector(settings).connect()
    except broker.BrokerConnectError as exc:
        print(f"lifecycle-manage: cannot reach the broker: {exc}", file=sys.stderr)
        return 1
    try:
        channel = conn.channel()
        rows = []
        for name in (topology.queue, topology.dead_letter_queue):
            try:
                declared = channel.queue_declare(name, passive=True)
            except amqp.exceptions.NotFound:
                print(f"lifecycle-manage: queue {name!r} does not exist on "
                      f"{broker.describe(settings, connected_to)} (no consumer "
                      "has declared it yet)", file=sys.stderr)
                return 1
            rows.append({"queue": name, "messages": declared.message_count,
                         "consumers": declared.consumer_count})
    finally:
        broker.release(conn)
    if conf.command.format == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["queue", "messages", "consumers"]))
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
    text = str(value)
    if not text.isprintable():  # a domain name may hold a terminal's escape sequences
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text


if __name__ == "__main__":
    sys.exit(main())
