"""``lifecycle-manage``: schema migrations, hosts and instances as they stand, the
history of events, the state of the consumers' queue on the broker and its dead
letters. The parser and the dispatch; each command lives
in ``consumer/cli/``."""

from __future__ import annotations

import dataclasses
import sys

from oslo_config import cfg

from lifecycle_common import config as common
from consumer import config
from consumer.cli import dead_letters, history, listing, tail_loop
from consumer.db import engine as db_engine
from consumer.db import migrate


def _add_commands(subparsers):
    db = subparsers.add_parser("db", help="the database schema")
    db_sub = _actions(db)
    db_sub.add_parser("sync", help="create or upgrade the schema to the newest version")
    db_sub.add_parser("version", help="print the schema's current version")

    queue_sub = _actions(subparsers.add_parser("queue", help="the consumers' queue on the broker"))
    status = queue_sub.add_parser(
        "status", help="messages waiting, consumers, and dead letters of [consumer] queue_name")
    status.add_argument("--queue", metavar="NAME",
                        help="another queue (a webhook's [webhook] queue_name, say)")
    _format(status)

    instance_sub = _actions(subparsers.add_parser("instance", help="instances"))
    listing_ = instance_sub.add_parser("list", help="list instances")
    _format(listing_)
    listing_.add_argument("--host", dest="only_host", help="only this host's instances")
    listing_.add_argument("--no-deleted", action="store_true",
                          help="leave out deleted instances")
    history.add_instance_show(instance_sub)

    host_sub = _actions(subparsers.add_parser("host", help="hosts"))
    _format(host_sub.add_parser("list", help="list hosts"))
    rename = host_sub.add_parser(
        "rename", help="give a host's instances and row a new name (README: Renaming a host)")
    rename.add_argument("old_name", help="the name the database knows the host by")
    rename.add_argument("new_name", help="the host's new [DEFAULT] host")

    events_sub = _actions(subparsers.add_parser(
        "events", help="events: from the journal, or live from the bus"))
    history.add_events_list(events_sub)
    tail_loop.add_parser(events_sub)

    dead_letters.add_commands(subparsers)


def _actions(parser):
    sub = parser.add_subparsers(dest="action")
    sub.required = True
    return sub


def _format(parser) -> None:
    parser.add_argument("--format", choices=["table", "json"], default="table")


def make_conf(argv):
    conf = config.make_conf()
    conf.register_cli_opt(cfg.SubCommandOpt("command", handler=_add_commands))
    return config.load(argv, prog="lifecycle-manage", conf=conf)


def main(argv: list[str] | None = None) -> int:
    return common.run_main("lifecycle-manage", make_conf,
                           sys.argv[1:] if argv is None else argv, _run, tool=True)


# (command, action) -> the function that runs it: on the broker (conf), or on the
# database (conf, engine).
BROKER_COMMANDS = {("queue", "status"): listing.queue_status,
                   ("events", "tail"): tail_loop.run}
DATABASE_COMMANDS = {
    ("instance", "list"): listing.instance_list,
    ("instance", "show"): history.instance_show,
    ("host", "list"): listing.host_list,
    ("host", "rename"): listing.host_rename,
    ("events", "list"): history.events_list,
}


def _run(conf) -> int:
    key = (conf.command.name, conf.command.action)
    if key[0] == "dlq":
        return dead_letters.run(conf)
    if key in BROKER_COMMANDS:
        return BROKER_COMMANDS[key](conf)
    timeouts = config.database_timeouts(conf)
    if key[0] == "db":  # a migration may rewrite a large table: no statement timeout
        timeouts = dataclasses.replace(timeouts, statement=0)
    engine = db_engine.create(conf.database.connection, timeouts)
    try:
        if key[0] == "db":
            return _db(engine, key[1])
        return DATABASE_COMMANDS[key](conf, engine)
    finally:
        engine.dispose()


def _db(engine, action: str) -> int:
    if action == "sync":
        migrate.sync(engine)
        print(f"database at revision {migrate.current(engine)}")
    else:
        print(migrate.current(engine) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
