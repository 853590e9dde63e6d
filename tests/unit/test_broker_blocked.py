"""connection.blocked: RabbitMQ's reason read off the wire, the time blocked counted, and
the broker's health check (degraded, never failing, however long)."""

from __future__ import annotations

import logging
import struct
import types

import amqp
import amqp.spec
from amqp.serialization import dumps

from lifecycle_common import broker
from lifecycle_common.health import Status


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def watched(state: broker.BlockedState):
    """A py-amqp Connection (never connected) whose methods feed ``state``."""
    conn = types.SimpleNamespace(connection=amqp.Connection())
    state.watch(conn, "amqp://guest@mq1:5672/")
    return conn


def test_the_reason_rabbitmq_gives_is_read_and_logged(caplog):
    caplog.set_level(logging.INFO, logger="lifecycle_common.broker")
    clock = Clock()
    state = broker.BlockedState(role="publishing connection", clock=clock)
    conn = watched(state)
    # A method frame's payload: class and method ids, then the arguments.
    payload = struct.pack(">HH", *amqp.spec.Connection.Blocked) + dumps("s", ["low on disk"])
    conn.connection.dispatch_method(amqp.spec.Connection.Blocked, payload, None)
    assert state.is_blocked and state.reason == "low on disk"
    assert ("the broker amqp://guest@mq1:5672/ blocked this service's publishing "
            "connection: low on disk") in caplog.text
    clock.now += 12.5
    conn.connection.dispatch_method(amqp.spec.Connection.Unblocked,
                                    struct.pack(">HH", *amqp.spec.Connection.Unblocked), None)
    assert not state.is_blocked and state.reason == ""
    assert "unblocked this service's publishing connection after 12.5s" in caplog.text
    assert state.seconds_total() == 12.5 and state.blocks == 1


def test_time_blocked_adds_up_over_blocks_and_connections():
    clock = Clock()
    state = broker.BlockedState(clock=clock)
    state.block("low on memory")
    clock.now += 3
    assert state.blocked_for() == 3 and state.seconds_total() == 3
    state.unblock()
    clock.now += 100  # not blocked: not counted
    state.block("low on disk")
    clock.now += 4
    state.closed()  # the connection went while blocked: the block ends with it
    assert not state.is_blocked
    assert state.seconds_total() == 7 and state.blocks == 2
    state.unblock()  # nothing to end
    assert state.seconds_total() == 7


def test_a_new_connection_starts_unblocked():
    clock = Clock()
    state = broker.BlockedState(clock=clock)
    state.block("low on disk")
    clock.now += 2
    watched(state)
    assert not state.is_blocked and state.seconds_total() == 2


def test_the_broker_check_is_degraded_while_unreachable_or_blocked_however_long():
    clock = Clock()
    state = broker.BlockedState(clock=clock)
    ok = broker.check("the broker", None, state, clock.now, "events wait in the outbox")
    assert (ok.status, ok.detail) == (Status.OK, "the broker: reachable")
    away = broker.check("the broker", clock.now - 86400, state, clock.now,
                        "events wait in the outbox")
    assert away.status is Status.DEGRADED
    assert away.detail == "the broker: unreachable for 86400.0s; events wait in the outbox"
    watched(state)
    state.block("low on memory")
    clock.now += 86400
    blocked = broker.check("the broker", None, state, clock.now, "events wait in the outbox")
    assert blocked.status is Status.DEGRADED
    assert blocked.detail == ("the broker: blocked by amqp://guest@mq1:5672/ for 86400.0s: "
                              "low on memory; events wait in the outbox")
