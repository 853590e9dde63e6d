"""Settlement by table: which basic.ack frames ack exactly the messages settled (never
one held), and when a message to dead-letter may be acked. No broker."""

from __future__ import annotations

import pytest

from consumer.settlement import DeadLetterBook, Unacked

# Each case: deliveries so far, the tags acked in turn, and the frames each ack sends
# as (delivery_tag, multiple).
ACK_CASES = {
    "a whole batch: one multiple ack": (
        range(1, 6), [[1, 2, 3, 4, 5]], [[(5, True)]]),
    "one message: a single ack": (
        range(1, 2), [[1]], [[(1, False)]]),
    "a message held in the middle: multiple below it, single after": (
        range(1, 8), [[1, 2, 3, 5, 6, 7]], [[(3, True), (5, False), (6, False), (7, False)]]),
    "the first message held: each acked alone": (
        range(1, 4), [[2, 3]], [[(2, False), (3, False)]]),
    "the held one acked later: a single ack, then multiples again": (
        range(1, 8), [[1, 2, 4], [3], [5, 6, 7]], [[(2, True), (4, False)], [(3, False)],
                                                   [(7, True)]]),
    "deliveries after the batch are not acked by its multiple ack": (
        range(1, 9), [[1, 2, 3]], [[(3, True)]]),
    "a tag acked twice is acked once": (
        range(1, 4), [[1], [1, 2]], [[(1, False)], [(2, False)]]),
}


@pytest.mark.parametrize(("delivered", "acked", "frames"), list(ACK_CASES.values()),
                         ids=list(ACK_CASES))
def test_acks_never_settle_a_held_message(delivered, acked, frames):
    unacked = Unacked()
    for tag in delivered:
        unacked.delivered(tag)
    assert [unacked.acks(tags) for tags in acked] == frames


def test_what_the_frames_settle_is_exactly_what_was_acked():
    """Replays the frames as the broker applies them, over random holds."""
    import random
    rng = random.Random(7)
    for _ in range(200):
        unacked, broker_unacked = Unacked(), set()
        for tag in range(1, 41):
            unacked.delivered(tag)
            broker_unacked.add(tag)
        held = set(rng.sample(range(1, 41), rng.randint(0, 8)))
        batch = [tag for tag in range(1, 31) if tag not in held]
        for tag, multiple in unacked.acks(batch):
            settled = {t for t in broker_unacked if t <= tag} if multiple else {tag}
            assert not settled & held and tag in broker_unacked
            broker_unacked -= settled
        assert broker_unacked == held | set(range(31, 41))


# -- dead letters held until confirmed --------------------------------------------------

def book() -> DeadLetterBook:
    return DeadLetterBook(retry_max=30.0, rand=lambda: 1.0)


def test_an_original_is_acked_only_once_its_copy_is_confirmed():
    b = book()
    done = []
    b.hold(7, "copy-7", "dl-7", on_done=lambda: done.append(7))
    assert b.due(0.0) == [(7, "copy-7")]
    dl_tag = b.sent(7)
    assert b.due(0.0) == []  # in flight: not sent twice
    assert b.take_confirmed() == []
    b.acked(dl_tag, False, now=1.0)
    ((tag, on_done),) = b.take_confirmed()
    assert tag == 7 and b.held == 0
    on_done()
    assert done == [7]


def test_a_nacked_or_returned_copy_is_sent_again_with_back_off_and_the_original_held():
    b = book()
    b.hold(7, "copy-7", "dl-7")
    b.nacked(b.sent(7), False, now=10.0)
    assert b.held == 1 and b.take_confirmed() == []
    assert b.due(10.4) == [] and b.due(10.5) == [(7, "copy-7")]
    tag = b.sent(7)
    b.returned("dl-7")  # no queue bound to the dead-letter exchange: its ack follows
    b.acked(tag, False, now=20.0)
    assert b.take_confirmed() == [] and b.held == 1
    assert b.next_retry() == 20.0 + 1.0  # the next step
    b.acked(b.sent(7), False, now=30.0)
    assert [t for t, _ in b.take_confirmed()] == [7]
    assert b.refused == 2


def test_a_lost_dead_letter_connection_sends_the_copies_again_at_once():
    b = book()
    b.hold(1, "c1", "dl-1")
    b.hold(2, "c2", "dl-2")
    b.sent(1)
    b.sent(2)
    b.connection_lost()
    assert [tag for tag, _ in b.due(0.0)] == [1, 2]
    b.acked(1, False, now=0.0)  # a late confirm of the old connection: tags started over
    assert b.take_confirmed() == []
    first, second = b.sent(1), b.sent(2)
    b.acked(second, True, now=1.0)
    assert [t for t, _ in b.take_confirmed()] == [1, 2]
    assert first == 1


def test_a_lost_consuming_connection_returns_the_originals_and_owes_nothing():
    b = book()
    b.hold(1, "c1", "dl-1")
    tag = b.sent(1)
    assert b.release_all() == 1
    b.acked(tag, False, now=0.0)  # its copy confirmed after all: nothing to ack
    assert b.take_confirmed() == [] and b.held == 0


def test_copies_in_flight_stall_after_the_timeout_but_not_while_blocked():
    b = book()
    b.hold(1, "c1", "dl-1")
    b.sent(1)
    assert b.stalled(0.0, 30.0) is False
    b.restart_wait(100.0)  # blocked until 100
    assert b.stalled(129.0, 30.0) is False
    assert b.stalled(130.5, 30.0) is True
