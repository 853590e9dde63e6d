"""``instance list``, ``host list`` and ``queue status``: the state as it stands; and
``host rename``."""

from __future__ import annotations

import json
import sys

import amqp

from lifecycle_common import broker
from consumer.cli import fault_views, tables
from consumer.db import host_rename as host_rename_
from consumer.db import queries
from consumer.topology import Topology

INSTANCE_COLUMNS = ["uuid", "name", "host", "host_status", "power_state", "state_reason",
                    "deleted", "reboots", "last_fault", "event_occurred_at", "applied_at"]
# Every field of an instance, as ``instance show`` prints it.
INSTANCE_FIELDS = ["uuid", "name", "host", "host_status", "power_state", "state_reason",
                   "deleted", "last_event_type", "epoch", "seq", "event_occurred_at",
                   "applied_at", "reboots", "last_fault"]
HOST_COLUMNS = ["name", "status", "agent_status", "libvirt_connected", "last_heartbeat_at",
                "clock_offset", "epoch", "last_seq"]


def _print(rows: list[dict], columns: list[str], fmt: str, right=()) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    else:
        print(tables.table(rows, columns, right=right))


def instance_list(conf, engine) -> int:
    rows = queries.list_instances(engine, host=conf.command.only_host,
                                  include_deleted=not conf.command.no_deleted)
    if conf.command.format != "json":  # the last fault's type and moment, in a cell
        rows = [{**r, "last_fault": fault_views.last_fault_cell(r["last_fault"])} for r in rows]
    _print(rows, INSTANCE_COLUMNS, conf.command.format, right=["reboots"])
    return 0


def host_list(conf, engine) -> int:
    _print(queries.list_hosts(engine), HOST_COLUMNS, conf.command.format,
           right=["clock_offset", "epoch", "last_seq"])
    return 0


def host_rename(conf, engine) -> int:
    old, new = conf.command.old_name, conf.command.new_name
    try:
        renamed = host_rename_.rename(engine, old, new)
    except host_rename_.UnknownHost:
        print(f"lifecycle-manage: no host {old!r} in the database", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"lifecycle-manage: {exc}", file=sys.stderr)
        return 1
    print(f"host {old} renamed {new}: {renamed.instances} instances moved"
          + (f" (the row of {new} kept, {old}'s removed)" if renamed.merged else ""))
    return 0


def queue_status(conf) -> int:
    """The queue and its dead-letter queue, read with passive declares (which change
    nothing and need no permission beyond reaching the vhost)."""
    queue = conf.command.queue or conf.consumer.queue_name
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
    _print(rows, ["queue", "messages", "consumers"], conf.command.format,
           right=["messages", "consumers"])
    return 0
