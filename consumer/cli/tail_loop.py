"""``events tail``: a live view of the bus, on a queue of its own.

The queue is server-named, exclusive and auto-delete, bound to ``[DEFAULT]
control_exchange`` with ``<topic>.info`` for each of ``[oslo_messaging_notifications]
topics``: it sees a copy of every notification and takes nothing from the consumers'
queue; it disappears with the connection. Messages are taken without acks (a view may
miss messages while it is not running, and needs no more). SIGINT and SIGTERM end it
cleanly, exit status 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

import amqp.exceptions

from lifecycle_common import broker, timeutil
from consumer.cli import tables, tail

POLL = 0.2  # seconds between looks at the stop flag while no message arrives


def add_parser(events_sub) -> None:
    parser = events_sub.add_parser(
        "tail", help="events as they go by on the bus (on a queue of its own)",
        description="Shows notifications as they are published, from a queue of its own "
                    "(exclusive, auto-delete) bound to [DEFAULT] control_exchange; the "
                    "consumers' queue is not touched. Ctrl-C ends it.")
    parser.add_argument("--host", dest="only_hosts", action="append", metavar="NAME",
                        help="only events from this host (repeatable)")
    parser.add_argument("--type", dest="types", action="append", metavar="GLOB",
                        help="only these event types, globs such as 'instance.*' "
                             "(repeatable, or comma-separated); by default every type "
                             "but host.heartbeat")
    parser.add_argument("--instance", dest="only_instance", metavar="UUID",
                        help="only events about this instance")
    parser.add_argument("--format", choices=["table", "json"], default="table",
                        help="a table (coloured on a terminal, unless NO_COLOR is set), "
                             "or one JSON object a line")
    parser.add_argument("--count", type=int, metavar="N",
                        help="exit after N events have been shown")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="exit after this long (status 1 if --count was not reached)")


class _Output:
    """Prints records: JSON lines, or table rows under a header repeated every screenful."""

    def __init__(self, fmt: str, stream):
        self.stream = stream
        self.json = fmt == "json"
        isatty = stream.isatty()
        self.colour = tail.use_colour(isatty, os.environ)
        self.rows = tables.FixedWidthRows(tail.COLUMNS, right=tail.RIGHT)
        self.screenful = max(shutil.get_terminal_size().lines - 4, 5) if isatty else None
        self.printed = 0

    def write(self, rec: dict) -> None:
        if self.json:
            line = json.dumps(rec)
        else:
            line = self.rows.row(tail.cells(rec), tail.styles(rec) if self.colour else ())
            if self.printed == 0 or (self.screenful and self.printed % self.screenful == 0):
                line = f"{self.rows.header()}\n{line}"
        self.stream.write(line + "\n")
        self.stream.flush()
        self.printed += 1


def run(conf) -> int:
    c = conf.command
    wanted = tail.Filter(hosts=frozenset(c.only_hosts or ()), types=tail.parse_types(c.types),
                         instance=c.only_instance)
    exchange = conf.control_exchange
    settings = broker.settings(conf)
    try:
        conn, connected_to = broker.Connector(settings).connect()
    except broker.BrokerConnectError as exc:
        return _fail(f"cannot reach the broker: {exc}")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    output = _Output(c.format, sys.stdout)
    shown = 0

    def on_message(message) -> None:
        nonlocal shown
        rec = tail.record(message.body, timeutil.utcnow())
        if stop.is_set() or not wanted.matches(rec):
            return
        output.write(rec)
        shown += 1
        if c.count is not None and shown >= c.count:
            stop.set()

    try:
        channel = conn.channel()
        channel.auto_decode = False  # the body's bytes, as the consumer reads them
        try:
            channel.exchange_declare(exchange, "topic", passive=True)
        except amqp.exceptions.NotFound:
            return _fail(f"exchange {exchange!r} does not exist on "
                         f"{broker.describe(settings, connected_to)} (no agent or consumer "
                         "has declared it yet)")
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).queue
        for topic in conf.oslo_messaging_notifications.topics:
            channel.queue_bind(queue, exchange, f"{topic}.info")
        channel.basic_consume(queue, no_ack=True, callback=on_message)
        keys = ", ".join(f"{t}.info" for t in conf.oslo_messaging_notifications.topics)
        print(f"lifecycle-manage: watching exchange {exchange!r} ({keys}) on "
              f"{broker.describe(settings, connected_to)}; Ctrl-C ends", file=sys.stderr,
              flush=True)
        deadline = None if c.timeout is None else time.monotonic() + c.timeout
        while not stop.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if c.count is not None:
                    return _fail(f"{shown} of {c.count} events within {c.timeout:g}s")
                break
            try:
                conn.drain_events(timeout=POLL if remaining is None else min(POLL, remaining))
            except socket.timeout:
                conn.heartbeat_check()
        return 0
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        _quiet_stdout()
        return 0
    except (OSError, amqp.exceptions.AMQPError) as exc:
        return _fail(f"the broker connection failed: {broker.explain(exc)}")
    finally:
        broker.release(conn)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(message: str) -> int:
    print(f"lifecycle-manage: {message}", file=sys.stderr)
    return 1


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so that the interpreter's flush at
    exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
