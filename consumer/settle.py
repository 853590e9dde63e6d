"""How one batch from the queue is settled: what is applied, acked, dead-lettered with
which reason, held and retried. Pure: no I/O, no clock of its own; it is fed the
batch's admission verdicts and how each attempt to apply went, and says what to do
next (tests/unit/test_settle.py, by table). ``ConsumerService`` does the I/O.

Every message ends in exactly one of:
- acked: applied (the transaction that applied it committed), or a foreign
  notification (nothing to apply);
- dead-lettered with its reason: refused by admission, or refused by the database or
  the store while applying (``BatchRejected``, or any other exception). A part of the
  batch that is refused is split in halves, depth first, until each refused message
  stands alone, so that its batch-mates are applied;
- held, unacked, while the database is unavailable (``DatabaseUnavailable``): the same
  part is applied again after a back-off, for as long as it takes (a service that
  stops meanwhile acks nothing of the batch, which returns to the queue).

The protocol::

    settlement = BatchSettlement(batch, verdicts, retry_max)
    step = settlement.next()
    while isinstance(step, Apply):
        ... apply step.notes, then one of:
        settlement.applied()            # committed
        hold = settlement.unavailable() # wait hold.delay, then the same step again
        settlement.rejected(refusal)    # refused: split, or dead-letter it alone
        step = settlement.next()
    # step is Settled: dead-letter step.dead_letters, then ack step.ack
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Generic, Optional, Sequence, TypeVar

from lifecycle_common import wire
from lifecycle_common.retry import backoff
from consumer.admission import Admitted, Foreign, Refused, Verdict

M = TypeVar("M")  # a message as the queue delivered it (opaque here)


@dataclasses.dataclass(frozen=True)
class Apply:
    """Apply ``notes`` in one transaction, then tell the settlement how it went."""
    notes: list[wire.Notification]


@dataclasses.dataclass(frozen=True)
class Hold:
    """The database is unavailable: hold the batch, unacked, for ``delay`` seconds,
    then apply the same notes again (retry ``attempt``, 0-based)."""
    delay: float
    attempt: int


@dataclasses.dataclass(frozen=True)
class Settled(Generic[M]):
    """Nothing more to apply: dead-letter each of ``dead_letters`` with its verdict's
    reason (admission's refusals in delivery order, then those of the database in the
    order found), and ack ``ack``: every other message, in delivery order."""
    ack: list[M]
    dead_letters: list[tuple[M, Refused]]


class BatchSettlement(Generic[M]):
    """One batch, from its admission verdicts to what is acked and dead-lettered."""

    def __init__(self, batch: Sequence[M], verdicts: Sequence[Verdict], retry_max: float,
                 rand: Callable[[], float] = random.random):
        """``verdicts[i]`` is ``batch[i]``'s; ``retry_max``: the longest hold between two
        attempts while the database is unavailable."""
        if len(batch) != len(verdicts):
            raise ValueError(f"{len(batch)} messages but {len(verdicts)} verdicts")
        self._batch = batch
        self._retry_max = retry_max
        self._rand = rand
        self._refused: list[tuple[M, Refused]] = []
        admitted: list[tuple[M, wire.Notification]] = []
        self.foreign = 0  # foreign notifications: nothing to apply, acked
        for message, verdict in zip(batch, verdicts):
            if type(verdict) is Admitted:
                admitted.append((message, verdict.note))
            elif type(verdict) is Foreign:
                self.foreign += 1
            else:
                self._refused.append((message, verdict))
        # Parts still to apply, as a stack: the last is applied next.
        self._parts: list[list[tuple[M, wire.Notification]]] = [admitted] if admitted else []
        self._attempt = 0  # attempts at the part in hand that found the database away

    def next(self) -> Apply | Settled[M]:
        """What to do now: apply a part, or, when every part is settled, the outcome."""
        if self._parts:
            part = self._parts[-1]
            return Apply([note for _, note in part])
        held = {id(message) for message, _ in self._refused}
        return Settled([m for m in self._batch if id(m) not in held], list(self._refused))

    def applied(self) -> None:
        """The part in hand was applied and committed."""
        self._parts.pop()
        self._attempt = 0

    def unavailable(self) -> Hold:
        """The database could not take the part in hand (unavailable, or too slow): hold
        it and apply it again after the returned back-off."""
        if not self._parts:
            raise RuntimeError("nothing is being applied")
        hold = Hold(backoff(self._attempt, self._retry_max, rand=self._rand), self._attempt)
        self._attempt += 1
        return hold

    def rejected(self, refusal: Refused) -> Optional[wire.Notification]:
        """The database or the store refused the part in hand, for ``refusal``'s reason.
        A part of one message is dead-lettered with it, and its note returned; a larger
        part is split in halves, the first applied next, and None returned."""
        part = self._parts.pop()
        self._attempt = 0
        if len(part) == 1:
            message, note = part[0]
            self._refused.append((message, refusal))
            return note
        half = len(part) // 2
        self._parts += [part[half:], part[:half]]
        return None
