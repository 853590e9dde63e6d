"""ConsumerService.handle_batch does what consumer.settle says, with a store and a
queue in memory: acks after the store returned, dead letters with their cause, holds
while the database is away, nothing acked when stopped meanwhile."""

from __future__ import annotations

import collections
import types

import amqp
import pytest

from consumer import admission
from consumer.errors import BatchRejected, DatabaseUnavailable
from consumer.service import ConsumerService
from lifecycle_common import broker
from tests.unit.test_admission import HOST, event_body


class Queue:
    def __init__(self):
        self.acked: list = []
        self.dead: list = []  # (message, reason, cause)
        self.dead_letters = types.SimpleNamespace(held=0, down_since=None,
                                                  blocked=broker.BlockedState())

    def ack(self, messages):
        self.acked.extend(messages)

    def dead_letter(self, message, reason, cause, on_done=None):
        self.dead.append((message, reason, cause))
        if on_done is not None:
            on_done()

    def keepalive(self):
        pass


class Store:
    """Applies what it is given, but refuses a batch holding a bad seq, and says the
    database is away as often as told first."""

    def __init__(self, bad=(), away=0, error=BatchRejected("value too long")):
        self.bad, self.away, self.error = set(bad), away, error
        self.batches: list[list[int]] = []

    def apply_batch(self, notes):
        seqs = [n.payload.seq for n in notes]
        self.batches.append(seqs)
        if self.away:
            self.away -= 1
            raise DatabaseUnavailable("connection refused")
        if self.bad & set(seqs):
            raise self.error
        return types.SimpleNamespace(
            outcomes=collections.Counter(applied=len(notes), stale=0, ignored=0),
            duplicates=0, heartbeats=0, applied=[(n.event_type, 0.0) for n in notes],
            clock_offsets={}, applied_at=None)


def messages(*seqs):
    return [amqp.Message(event_body(seq=seq), user_id=HOST) for seq in seqs]


def service(store, queue=None):
    return ConsumerService(queue or Queue(), store, host_down_after=60.0, retry_max=0.01)


def test_applied_then_acked():
    store, batch = Store(), messages(1, 2, 3)
    svc = service(store)
    svc.handle_batch(batch)
    assert store.batches == [[1, 2, 3]]
    assert svc.queue.acked == batch and not svc.queue.dead
    assert svc.stats.applied == 3 and svc.stats.batches == 1


def test_refused_by_the_database_dead_lettered_alone_the_rest_applied():
    store, batch = Store(bad={3}), messages(1, 2, 3, 4)
    svc = service(store)
    svc.handle_batch(batch)
    assert store.batches == [[1, 2, 3, 4], [1, 2], [3, 4], [3], [4]]
    assert svc.queue.acked == [batch[0], batch[1], batch[3]]
    [(message, reason, cause)] = svc.queue.dead
    assert message is batch[2] and cause == "database"
    assert reason == "refused by the database: value too long"
    assert svc.dead_letters == {admission.Cause.DATABASE: 1}


def test_any_other_exception_dead_letters_as_apply():
    store, batch = Store(bad={1}, error=KeyError("x")), messages(1)
    svc = service(store)
    svc.handle_batch(batch)
    [(_, reason, cause)] = svc.queue.dead
    assert (reason, cause) == ("cannot be applied: KeyError: 'x'", "apply")


def test_unreadable_dead_lettered_before_the_database_is_asked():
    store = Store()
    batch = [amqp.Message(b"\xff"), *messages(5)]
    svc = service(store)
    svc.handle_batch(batch)
    assert store.batches == [[5]]
    assert [m for m, _, _ in svc.queue.dead] == [batch[0]]
    assert svc.queue.acked == [batch[1]]


def test_held_while_the_database_is_away_then_applied():
    store, batch = Store(away=2), messages(1, 2)
    svc = service(store)
    svc.handle_batch(batch)
    assert store.batches == [[1, 2]] * 3
    assert svc.queue.acked == batch
    assert svc.database.batches.down_since is None  # up again


def test_stopped_while_the_database_is_away_nothing_is_acked():
    store, batch = Store(away=10**6), [amqp.Message(b"\xff"), *messages(1, 2)]
    svc = service(store)
    svc._stop.set()
    svc.handle_batch(batch)
    assert svc.queue.acked == [] and svc.queue.dead == []
    assert svc.stats.batches == 0


def test_a_failure_counting_a_committed_batch_still_acks_it(monkeypatch):
    store, batch = Store(), messages(1, 2)
    svc = service(store)
    monkeypatch.setattr(svc.metrics, "batch_applied",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("a bug")))
    svc.handle_batch(batch)
    assert store.batches == [[1, 2]]  # applied once, not split
    assert svc.queue.acked == batch and not svc.queue.dead


@pytest.mark.parametrize("identity", list(admission.PublisherIdentity))
def test_foreign_notifications_are_acked_and_counted(identity):
    from tests.unit.test_admission import FOREIGN
    batch = [amqp.Message(FOREIGN)]
    svc = ConsumerService(Queue(), Store(), host_down_after=60.0, retry_max=0.01,
                          policy=admission.Policy(identity=identity))
    svc.handle_batch(batch)
    assert svc.queue.acked == batch and svc.stats.foreign == 1
