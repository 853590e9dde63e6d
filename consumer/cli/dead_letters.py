"""``dlq list``, ``show``, ``replay`` and ``purge``: the consumers' dead-letter queue
on the broker (``<[consumer] queue_name>.dlq``).

Reading is non-destructive: messages are taken with ``basic_get`` and not acked, then
given back with ``basic_reject(requeue)``, one by one in the order they came, before
the channel closes: a classic queue puts each back where it was, a quorum queue in the
order given back (closing the channel alone gives a quorum queue's messages back in no
particular order, seen with RabbitMQ 3.10).
Replaying publishes each message back onto its original exchange with its original
routing key (with ``--queue NAME``, into queue NAME alone, through the default exchange), persistent and mandatory, under publisher confirms, and acks (removes) it
from the dead-letter queue only once the broker confirmed the copy and did not return
it as unroutable: a replay interrupted at any point loses nothing, at worst a message
is both replayed and still dead-lettered (the consumer applies it once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from typing import Iterator, Optional

import amqp
import amqp.exceptions

from lifecycle_common import broker
from consumer.cli import confirm, dead_letter_view, tables
from consumer.cli.dead_letter_view import DeadLetter
from consumer.topology import Topology

CONFIRM_TIMEOUT = 30.0  # seconds to wait for the broker to confirm one replayed message
LIST_COLUMNS = ["id", "message_id", "event_type", "host", "cause", "dead_lettered_at",
                "size", "reason"]
SHOW_FIELDS = ["id", "message_id", "event_type", "host", "cause", "reason",
               "dead_lettered_at", "original_user_id", "original_exchange",
               "original_routing_key", "size", "content_type", "content_encoding"]


class DeadLetterError(Exception):
    """The command cannot go on; the message says why, in one line."""


def add_commands(subparsers) -> None:
    dlq = subparsers.add_parser(
        "dlq", help="the dead-letter queue, <[consumer] queue_name>.dlq (or --queue's)")
    dlq.add_argument("--queue", metavar="NAME",
                     help="the dead letters of queue NAME (NAME.dlq), e.g. a webhook's "
                          "[webhook] queue_name; replayed into NAME alone (through the "
                          "default exchange), not to every subscriber of the exchange")
    sub = dlq.add_subparsers(dest="action")
    sub.required = True
    listing = sub.add_parser("list", help="dead letters, oldest first (read, not removed)")
    listing.add_argument("--limit", type=int, default=100,
                         help="at most this many (default 100)")
    listing.add_argument("--format", choices=["table", "json"], default="table")
    show = sub.add_parser("show", help="one dead letter: its headers and body")
    show.add_argument("letter_id", metavar="ID", help="its dead-letter id or message id")
    show.add_argument("--format", choices=["table", "json"], default="table")
    replay = sub.add_parser(
        "replay", help="publish dead letters back onto their exchange, each removed from "
                       "the dead-letter queue once the broker confirmed it",
        description="Publishes each dead letter back onto its original exchange with its "
                    "original routing key (else [DEFAULT] control_exchange and "
                    "'<first topic>.info'), with the AMQP user_id of the user this tool "
                    "logs in as (RabbitMQ refuses any other). With [consumer] "
                    "publisher_identity = host_user the consumer then accepts a replayed "
                    "message only if that user is in [consumer] trusted_publishers. Every "
                    "subscriber of the exchange receives the message again.")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("letter_id", metavar="ID", nargs="?",
                       help="its dead-letter id or message id")
    which.add_argument("--all", action="store_true", dest="every",
                       help="every dead letter in the queue")
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge = sub.add_parser("purge", help="remove every dead letter")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run(conf) -> int:
    action = conf.command.action
    try:
        with _dead_letter_queue(conf) as dlq:
            return {"list": _list, "show": _show, "replay": _replay,
                    "purge": _purge}[action](conf, dlq)
    except DeadLetterError as exc:
        print(f"lifecycle-manage: {exc}", file=sys.stderr)
        return 1


class DeadLetterQueue:
    """The dead-letter queue on one connection."""

    def __init__(self, conn, name: str, where: str, user: str):
        self.conn = conn
        self.name = name
        self.where = where
        self.user = user  # whom the broker knows this connection as

    def count(self) -> int:
        channel = self.conn.channel()
        try:
            return channel.queue_declare(self.name, passive=True).message_count
        except amqp.exceptions.NotFound:
            raise DeadLetterError(f"queue {self.name!r} does not exist on {self.where} (no "
                                  "consumer has declared it yet)") from None
        finally:
            _close(channel)

    @contextlib.contextmanager
    def held(self, limit: Optional[int] = None) -> Iterator["Held"]:
        """The first ``limit`` dead letters (all: None), taken and not acked, on a
        channel of their own; whatever is not acked goes back when it closes."""
        channel = self.conn.channel()
        channel.auto_decode = False  # the body's bytes as they are, whatever its encoding
        held = None
        try:
            held = Held(channel, self.name, limit)
            yield held
        finally:
            if held is not None:
                held.give_back()
            _close(channel)

    def peek(self, limit: Optional[int] = None) -> list[DeadLetter]:
        with self.held(limit) as held:
            return [letter for _, letter in held.letters]


class Held:
    """Dead letters taken from the queue and not yet acked, in the queue's order."""

    def __init__(self, channel, queue: str, limit: Optional[int]):
        self.channel = channel
        self.letters: list[tuple[int, DeadLetter]] = []
        self._removed: set[int] = set()
        while limit is None or len(self.letters) < limit:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                break
            self.letters.append((message.delivery_info["delivery_tag"],
                                 dead_letter_view.read(message.body, message.properties)))

    def remove(self, tag: int) -> None:
        """Ack: the message leaves the queue."""
        self.channel.basic_ack(tag)
        self._removed.add(tag)

    def give_back(self) -> None:
        """Every message not removed back to the queue, in the order it came."""
        with contextlib.suppress(Exception):  # a closed channel gives them back anyway
            for tag, _ in self.letters:
                if tag not in self._removed:
                    self.channel.basic_reject(tag, requeue=True)


@contextlib.contextmanager
def _dead_letter_queue(conf) -> Iterator[DeadLetterQueue]:
    name = Topology(exchange=conf.control_exchange,
                    queue=conf.command.queue or conf.consumer.queue_name,
                    routing_key="").dead_letter_queue
    settings = broker.settings(conf)
    try:
        conn, connected_to = broker.Connector(settings).connect()
    except broker.BrokerConnectError as exc:
        raise DeadLetterError(f"cannot reach the broker: {exc}") from None
    try:
        dlq = DeadLetterQueue(conn, name, broker.describe(settings, connected_to),
                              settings.login_user(connected_to))
        dlq.count()  # exists?
        yield dlq
    except (OSError, amqp.exceptions.AMQPError) as exc:
        raise DeadLetterError(f"the broker connection failed: {broker.explain(exc)}") from None
    finally:
        broker.release(conn)


def _list(conf, dlq: DeadLetterQueue) -> int:
    total = dlq.count()
    letters = [d.summary() for d in dlq.peek(conf.command.limit)]
    if conf.command.format == "json":
        print(json.dumps(letters, indent=2))
        return 0
    print(tables.table(letters, LIST_COLUMNS, right=["size"]))
    print(f"{len(letters)} of {_letters(total)} in {dlq.name}")
    return 0


def _one(dlq: DeadLetterQueue, ident: str) -> DeadLetter:
    found = dead_letter_view.find(dlq.peek(), ident)
    if not found:
        raise DeadLetterError(f"no dead letter {tables.cell(ident)} in {dlq.name}")
    if len(found) > 1:
        ids = ", ".join(tables.cell(d.id) for d in found)
        raise DeadLetterError(
            f"{len(found)} dead letters have message id {tables.cell(ident)}; name one by "
            f"its dead-letter id: {ids}")
    return found[0]


def _show(conf, dlq: DeadLetterQueue) -> int:
    detail = _one(dlq, conf.command.letter_id).detail()
    if conf.command.format == "json":
        print(json.dumps(detail, indent=2))
        return 0
    print(tables.key_values(detail, SHOW_FIELDS))
    print(dead_letter_view.render(detail))
    return 0


def _replay(conf, dlq: DeadLetterQueue) -> int:
    if conf.command.every:
        count, ident = dlq.count(), None
        if count == 0:
            print(f"no dead letters in {dlq.name}")
            return 0
        question = f"Replay all {_letters(count)} of {dlq.name}?"
    else:
        letter = _one(dlq, conf.command.letter_id)
        count, ident = dlq.count(), letter.id
        question = (f"Replay dead letter {tables.cell(letter.id)} ({letter.event_type or '?'}"
                    f" from {tables.cell(letter.host or '?')}) of {dlq.name}?")
    if not confirm.confirmed(question, conf.command.yes):
        return 1
    exchange = conf.control_exchange
    routing_key = f"{conf.oslo_messaging_notifications.topics[0]}.info"
    replayed, failed = [], []
    publisher = _Publisher(dlq.conn)
    try:
        # At most as many as were there before: a replayed message that is refused again
        # comes back to the queue's end, and is not replayed twice in one run.
        with dlq.held(count) as held:
            for tag, letter in held.letters:
                if ident is not None and letter.id != ident:
                    continue
                plan = dead_letter_view.replay(letter, dlq.user, exchange, routing_key)
                if conf.command.queue:  # into that queue alone
                    plan = dataclasses.replace(plan, exchange="", routing_key=conf.command.queue)
                problem = publisher.publish(plan)
                if problem is None:
                    held.remove(tag)
                    replayed.append(letter.id)
                else:
                    failed.append((letter.id, problem))
                    if publisher.closed:
                        break
    finally:
        publisher.close()
    print(f"replayed {_letters(len(replayed))}: {', '.join(map(tables.cell, replayed)) or '-'}")
    if ident is not None and not replayed and not failed:
        failed.append((ident, "no longer in the queue (taken meanwhile?)"))
    for letter_id, problem in failed:
        print(f"lifecycle-manage: not replayed, kept in {dlq.name}: {tables.cell(letter_id)}: "
              f"{problem}", file=sys.stderr)
    return 1 if failed else 0


class _Publisher:
    """A confirming channel that says, for each message, whether the broker took it."""

    def __init__(self, conn):
        self.channel = conn.channel()
        self.channel.confirm_select()
        self._returned: list[str] = []
        self.channel.events["basic_return"].add(self._on_return)
        self.closed = False

    def _on_return(self, exc, exchange, routing_key, message) -> None:
        self._returned.append(f"returned by the broker as unroutable ({exc.reply_text} "
                              f"on exchange {exchange!r}, routing key {routing_key!r})")

    def publish(self, plan: dead_letter_view.Replay) -> Optional[str]:
        """None once the broker confirmed the message and did not return it; else why
        not. (RabbitMQ sends the return before the confirm.)"""
        self._returned.clear()
        try:
            self.channel.basic_publish_confirm(
                amqp.Message(plan.body, **plan.properties), exchange=plan.exchange,
                routing_key=plan.routing_key, mandatory=True, confirm_timeout=CONFIRM_TIMEOUT)
        except amqp.exceptions.MessageNacked:
            return "nacked by the broker"
        except amqp.exceptions.ChannelError as exc:  # e.g. no such exchange
            self.closed = True
            return f"refused by the broker: {exc}"
        except TimeoutError:
            self.closed = True
            return f"not confirmed by the broker within {CONFIRM_TIMEOUT:.0f}s"
        return self._returned[0] if self._returned else None

    def close(self) -> None:
        if not self.closed:
            _close(self.channel)


def _purge(conf, dlq: DeadLetterQueue) -> int:
    count = dlq.count()
    if count == 0:
        print(f"no dead letters in {dlq.name}")
        return 0
    if not confirm.confirmed(f"Remove all {_letters(count)} of {dlq.name}?",
                             conf.command.yes):
        return 1
    channel = dlq.conn.channel()
    try:
        removed = channel.queue_purge(dlq.name)
    finally:
        _close(channel)
    print(f"removed {_letters(removed)} from {dlq.name}")
    return 0


def _letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def _close(channel) -> None:
    with contextlib.suppress(Exception):
        channel.close()
