"""What a real ``lifecycle-agent`` process stamped, read from its own log: the
equivalent, for agents run as processes, of what the in-process hosts tell the loss
checker (``benchmarks.checker``). Pure: it is given the log's text.

An agent says, at each start, the epoch it opened and the first sequence number it will
stamp (``agent for host H starting: epoch E, next seq S``) and, at a clean stop, the
last one it stamped (``agent for host H stopped: last seq L``). Every number from S to
L was stamped in epoch E: events and inventories share the sequence, and the callback
stamps an event before anything can fail. The last number of the epoch still running
is the one its heartbeats carry (``hosts.last_seq``, once a heartbeat sent after the
last change has arrived).

An event the outbox could not take (a full disk) keeps its number and is not
published: ``not_written`` counts those the agent logged, one line each for
inventories, the first ones of each minute for events (the rest are only counted, in
``lifecycle_agent_events_unwritten_total``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from benchmarks.checker import Stamped

_START = re.compile(r"agent for host (?P<host>\S+) starting: epoch (?P<epoch>\d+), "
                    r"next seq (?P<seq>\d+)")
_STOP = re.compile(r"agent for host (?P<host>\S+) stopped: last seq (?P<seq>\d+)")
_INVENTORY_NOT_WRITTEN = re.compile(
    r"host (?P<host>\S+) seq (?P<seq>\d+): \S+ inventory of \d+ domains not written to "
    r"the outbox")


@dataclasses.dataclass(frozen=True)
class Span:
    """The numbers one start of the agent stamped: ``first_seq`` to ``last_seq`` in
    ``epoch``; ``last_seq`` None while that start still runs."""
    epoch: int
    first_seq: int
    last_seq: Optional[int] = None


def spans(log: str, host: str) -> list[Span]:
    """Each start of ``host``'s agent in its log, oldest first."""
    found: list[Span] = []
    for line in log.splitlines():
        start = _START.search(line)
        if start and start["host"] == host:
            found.append(Span(int(start["epoch"]), int(start["seq"])))
            continue
        stop = _STOP.search(line)
        if stop and stop["host"] == host and found and found[-1].last_seq is None:
            found[-1] = dataclasses.replace(found[-1], last_seq=int(stop["seq"]))
    return found


def stamped(host: str, lineage: list[Span], since: tuple[int, int],
            heard: tuple[int, int]) -> list[Stamped]:
    """What ``host`` stamped after position ``since`` ((epoch, seq): everything up to
    it excluded), per epoch. ``heard``: the newest (epoch, seq) its heartbeats said,
    which ends the span still running (if it is of that epoch; else nothing of that
    span is known yet)."""
    result = []
    for span in lineage:
        if span.epoch < since[0]:
            continue
        first = max(span.first_seq, since[1] + 1) if span.epoch == since[0] else span.first_seq
        last = span.last_seq
        if last is None:
            last = heard[1] if heard[0] == span.epoch else first - 1
        result.append(Stamped(host, span.epoch, first, last))
    return result


def inventories_not_written(log: str, host: str) -> list[int]:
    """Sequence numbers of ``host``'s inventories the outbox refused, as logged."""
    return [int(m["seq"]) for m in _INVENTORY_NOT_WRITTEN.finditer(log) if m["host"] == host]
