"""ConfirmLedger, by table: what the broker says -> what may be deleted, what is sent
again on which keys and when. No broker: the ledger is fed the events."""

from __future__ import annotations

import pytest

from lifecycle_common.retry import backoff
from lifecycle_publisher.confirms import ConfirmLedger

A, B = "a.info", "b.info"


def ledger(keys=(A,), window=8, retry_max=30.0, rand=lambda: 1.0) -> ConfirmLedger:
    return ConfirmLedger(list(keys), window, retry_max, rand=rand)


def send_row(book: ConfirmLedger, row: int) -> dict[str, int]:
    """Send ``row`` on the keys the ledger says; returns key -> delivery tag."""
    return {key: book.sent(row, key) for key in book.keys_for(row)}


def send_due(book: ConfirmLedger, now: float) -> dict[tuple[int, str], int]:
    """Send what is due for a retry; returns (row, key) -> delivery tag."""
    return {(row, key): book.sent(row, key) for row, keys in book.due(now) for key in keys}


# Each case: keys, then steps (what happened), then what is deleted, what is owed.
# Steps: ("send", row) | ("ack", tag, multiple) | ("nack", tag, multiple)
#        | ("return", row, key) | ("lost",) | ("due", now)
CASES = {
    "one key, acked: deleted": (
        [A], [("send", 1), ("ack", 1, False)], [1], {}),
    "acks out of order, one at a time": (
        [A], [("send", 1), ("send", 2), ("ack", 2, False), ("ack", 1, False)], [2, 1], {}),
    "a multiple ack settles every earlier tag": (
        [A], [("send", 1), ("send", 2), ("send", 3), ("ack", 2, True)], [1, 2], {3: [A]}),
    "two keys: deleted only once both confirmed": (
        [A, B], [("send", 1), ("ack", 1, False)], [], {1: [B]}),
    "two keys, both confirmed": (
        [A, B], [("send", 1), ("ack", 2, True)], [1], {}),
    "returned on b only: kept, owed on b only": (
        [A, B], [("send", 1), ("return", 1, B), ("ack", 2, True)], [], {1: [B]}),
    "returned then retried and routed on b: deleted": (
        [A, B], [("send", 1), ("return", 1, B), ("ack", 2, True), ("due", 100.0),
                 ("ack", 3, False)], [1], {}),
    "a retry of b while a is in flight does not send a again": (
        [A, B], [("send", 1), ("return", 1, B), ("ack", 2, False), ("due", 100.0),
                 ("ack", 1, False), ("ack", 3, False)], [1], {}),
    "a connection lost while a row waits: its retry sends every key owed": (
        [A, B], [("send", 1), ("return", 1, B), ("ack", 2, False), ("lost",),
                 ("send", 1), ("due", 100.0), ("ack", 2, True)], [1], {}),
    "a nacked row retried after a reconnect, then read again from the outbox: sent once": (
        [A], [("send", 1), ("send", 2), ("nack", 1, False), ("lost",), ("due", 100.0),
              ("send", 1), ("send", 2), ("ack", 2, True)], [1, 2], {}),
    "a nack: owed, sent again": (
        [A], [("send", 1), ("nack", 1, False)], [], {1: [A]}),
    "connection lost: in flight is owed still": (
        [A, B], [("send", 1), ("send", 2), ("ack", 1, False), ("lost",)], [], {1: [B], 2: [A, B]}),
    "after a reconnect only the unconfirmed keys go out": (
        [A, B], [("send", 1), ("ack", 1, False), ("lost",), ("send", 1), ("ack", 1, False)],
        [1], {}),
    "an ack of an unknown tag changes nothing": (
        [A], [("send", 1), ("ack", 7, False)], [], {1: [A]}),
    "a heartbeat's ack deletes nothing": (
        [A], [("beat",), ("send", 1), ("ack", 2, True)], [1], {}),
}


@pytest.mark.parametrize(("keys", "steps", "deleted", "owed"), list(CASES.values()),
                         ids=list(CASES))
def test_ledger(keys, steps, deleted, owed):
    book = ledger(keys)
    for step in steps:
        kind = step[0]
        if kind == "send":
            send_row(book, step[1])
        elif kind == "beat":
            book.sent(None, keys[0])
        elif kind == "ack":
            book.acked(step[1], step[2], now=0.0)
        elif kind == "nack":
            book.nacked(step[1], step[2], now=0.0)
        elif kind == "return":
            book.returned(step[1], step[2])
        elif kind == "lost":
            book.connection_lost()
        elif kind == "due":
            send_due(book, step[1])
    assert book.take_done() == deleted
    for row, row_keys in owed.items():
        assert book.owed(row) == row_keys, row
    assert book.confirmed == len(deleted)


def test_after_a_reconnect_a_row_due_for_its_retry_is_not_also_sent_by_the_outbox_read():
    # Seen on a partitioned cluster: a node nacked row 1, the agent gave up on it and
    # reconnected; the retry sent row 1 and the outbox, read from its start, sent it
    # again; the second ack found the row settled and the publisher thread died.
    book = ledger([A])
    send_row(book, 1)
    send_row(book, 2)
    book.nacked(1, False, now=0.0)
    book.connection_lost()
    assert send_due(book, 100.0) == {(1, A): 1}
    assert send_row(book, 1) == {}
    assert send_row(book, 2) == {A: 2}
    assert book.in_flight == 2
    book.acked(2, True, now=0.0)
    assert book.take_done() == [1, 2]
    assert send_row(book, 3) == {A: 3}  # the rows after it go out as ever


def test_an_ack_for_a_copy_of_a_row_already_confirmed_changes_nothing():
    book = ledger([A])
    first, second = book.sent(1, A), book.sent(1, A)
    book.acked(first, False, now=0.0)
    book.acked(second, False, now=0.0)
    assert book.take_done() == [1]
    assert book.confirmed == 1


def test_an_unroutable_row_waits_for_its_retry_and_backs_off_while_nothing_routes():
    book = ledger([A], retry_max=30.0)
    send_row(book, 1)
    assert book.returned(1, A) is True  # news: worth a log line
    book.acked(1, False, now=100.0)
    assert book.unroutable == {A}
    assert book.keys_for(1) == []  # waiting: not sent again before it is due
    assert book.next_retry() == 100.0 + 0.5
    assert book.due(100.4) == [] and book.due(100.5) == [(1, [A])]
    tag = book.sent(1, A)
    assert book.returned(1, A) is False  # still the same trouble
    book.acked(tag, False, now=200.0)
    assert book.next_retry() == 200.0 + 1.0  # the next step of the back-off
    assert book.due(201.0) == [(1, [A])]
    tag = book.sent(1, A)
    book.acked(tag, False, now=300.0)  # routed at last
    assert book.take_done() == [1] and book.unroutable == set()


def test_one_unroutable_key_does_not_resend_the_row_on_the_routable_one():
    """The defect this replaces: a return marked the row returned for every key, so
    with topics a,b and nothing bound to b, a got a duplicate every retry."""
    book = ledger([A, B])
    tags = send_row(book, 1)
    book.returned(1, B)
    book.acked(max(tags.values()), True, now=0.0)
    sent_again = []
    for _ in range(5):
        for (row, key), tag in send_due(book, 10**9).items():
            sent_again.append(key)
            book.returned(row, key)
            book.acked(tag, False, now=0.0)
    assert sent_again == [B] * 5


def test_the_window_counts_what_is_in_flight():
    book = ledger([A, B])
    send_row(book, 1)
    assert book.in_flight == 2 and book.room == 6
    book.acked(2, True, now=0.0)
    assert book.in_flight == 0 and book.room == 8


def test_backoff_doubles_to_its_cap_and_draws_within_the_upper_half_of_each_step():
    assert [backoff(n, 8.0, rand=lambda: 1.0) for n in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert [backoff(n, 8.0, rand=lambda: 0.0) for n in range(6)] == [0.25, 0.5, 1, 2, 4, 4]
    assert backoff(10**6, 30.0, rand=lambda: 1.0) == 30.0


def test_backoff_spreads_a_fleet():
    delays = {round(backoff(3, 30.0), 6) for _ in range(200)}
    assert len(delays) > 150 and min(delays) >= 2.0 and max(delays) <= 4.0


def test_stalled_when_nothing_is_confirmed_for_the_timeout():
    """A cluster node without its majority takes messages and never confirms them:
    the publisher gives that connection up once nothing settled for confirm_timeout."""
    book = ledger([A])
    assert book.stalled(0.0, 10.0) is False  # nothing in flight
    send_row(book, 1)
    assert book.stalled(100.0, 10.0) is False  # first look: the wait starts now
    assert book.stalled(110.0, 10.0) is False
    assert book.stalled(110.5, 10.0) is True
    book.acked(1, False, now=111.0)
    assert book.stalled(200.0, 10.0) is False  # nothing in flight again


def test_not_stalled_while_confirms_keep_coming():
    book = ledger([A], window=1000)
    tags = [book.sent(row, A) for row in range(1, 40)]
    book.stalled(0.0, 10.0)
    for second, tag in enumerate(tags[:-1], 1):
        book.acked(tag, False, now=second * 5.0)
        assert book.stalled(second * 5.0 + 9.0, 10.0) is False
    assert book.stalled(38 * 5.0 + 10.5, 10.0) is True  # the last one never came


def test_a_lost_connection_starts_the_wait_over():
    book = ledger([A])
    send_row(book, 1)
    book.stalled(0.0, 10.0)
    book.connection_lost()
    send_row(book, 1)
    assert book.stalled(50.0, 10.0) is False
    assert book.stalled(61.0, 10.0) is True


def test_nacks_and_returns_are_counted_for_the_metrics():
    book = ledger([A])
    tags = [book.sent(row, A) for row in (1, 2, 3)]
    book.nacked(tags[1], True, now=0.0)  # rows 1 and 2
    book.returned(3, A)
    book.acked(tags[2], False, now=0.0)
    assert (book.nacks, book.returns, book.confirmed) == (2, 1, 0)


# -- nacks: back-off, and a node that refuses everything is given up -------------------

def nack_round(book: ConfirmLedger, row: int, now: float) -> float:
    """Send ``row`` (by its retry if it waits for one), have it nacked at ``now``;
    returns how long it then waits for its next retry."""
    sent = send_due(book, float("inf")) or {(row, A): book.sent(row, A)}
    (tag,) = sent.values()
    book.nacked(tag, False, now=now)
    return book.next_retry() - now


# Each case: what the broker answers, round by round ("nack" a row, "ack" another one),
# then the wait before each nacked row's retry (rand 1.0: the top of each step).
NACK_CASES = {
    "consecutive nacks back off 0.5, 1, 2, 4 ... up to retry_max": (
        ["nack"] * 8, [0.5, 1, 2, 4, 8, 16, 30, 30]),
    "an ack starts the back-off over": (
        ["nack", "nack", "nack", "ack", "nack", "nack"], [0.5, 1, 2, None, 0.5, 1]),
}


@pytest.mark.parametrize(("answers", "waits"), list(NACK_CASES.values()), ids=list(NACK_CASES))
def test_nacks_back_off_with_each_round_until_an_ack(answers, waits):
    book = ledger([A], retry_max=30.0)
    seen, now, other = [], 0.0, 100
    for answer in answers:
        now += 100.0
        if answer == "nack":
            seen.append(nack_round(book, 1, now))
        else:
            book.forget([1])  # (the row is settled elsewhere; another one is acked)
            other += 1
            book.acked(book.sent(other, A), False, now=now)
            seen.append(None)
    assert seen == waits


def test_a_round_of_many_nacks_is_one_step_of_the_back_off():
    """A node that refuses a whole window nacks each message: one round, one step."""
    book = ledger([A], window=64)
    tags = [book.sent(row, A) for row in range(1, 51)]
    for tag in tags:
        book.nacked(tag, False, now=0.0)
    assert book.next_nack_retry_step() == 0
    assert {row for row, _ in book.due(0.5)} == set(range(1, 51))  # all at step 0
    assert book.next_nack_retry_step() == 1
    tags = [book.sent(row, A) for row in range(1, 51)]
    book.nacked(tags[-1], True, now=1.0)
    assert book.next_retry() == 1.0 + 1.0


def test_nacks_without_an_ack_for_the_timeout_are_stalled_even_with_nothing_in_flight():
    """A node that nacks every publish: between retries nothing is in flight, and
    confirms keep coming (nacks); it is given up all the same after confirm_timeout."""
    book = ledger([A])
    book.nacked(book.sent(1, A), False, now=100.0)
    assert book.in_flight == 0
    assert book.stalled(105.0, 10.0) is False
    send_due(book, 106.0)
    book.nacked(1, False, now=106.0)
    assert book.stalled(110.0, 10.0) is False
    assert book.stalled(110.5, 10.0) is True  # nacks since 100.0, no ack


def test_an_ack_ends_the_run_of_nacks():
    book = ledger([A])
    book.nacked(book.sent(1, A), False, now=100.0)
    book.acked(book.sent(2, A), False, now=108.0)
    assert book.nacking_since is None
    assert book.stalled(200.0, 10.0) is False


def test_a_nacked_heartbeat_counts_as_a_refusal_too():
    book = ledger([A])
    book.nacked(book.sent(None, A), False, now=100.0)
    assert book.nacks == 0  # heartbeats are not kept, not counted as rows refused
    assert book.stalled(111.0, 10.0) is True


def test_nacked_rows_go_at_once_on_the_next_connection_and_the_step_is_kept():
    """Given up for nacking, the agent connects to the next node: the rows it nacked
    are sent there at once (a nack is one node's answer); should that node nack them
    too, their back-off goes on from the step reached."""
    book = ledger([A, B])
    for now in (0.0, 10.0, 20.0):
        for (row, key), tag in (send_due(book, now) or {(1, k): t for k, t in
                                                         send_row(book, 1).items()}).items():
            book.nacked(tag, False, now=now)
    assert book.next_retry() == 20.0 + 2.0
    book.connection_lost()
    assert book.nacking_since is None
    assert send_due(book, 20.1) == {(1, A): 1, (1, B): 2}  # at once, on every key owed
    assert book.keys_for(1) == []  # and not again by the outbox read
    book.nacked(2, True, now=20.2)
    assert book.next_retry() == 20.2 + 4.0


def test_a_row_waiting_after_a_return_still_waits_on_the_next_connection():
    book = ledger([A])
    send_row(book, 1)
    book.returned(1, A)
    book.acked(1, False, now=0.0)
    book.connection_lost()
    assert book.due(0.1) == []
    assert book.next_retry() == 0.5


def test_time_blocked_does_not_count_against_the_confirm_timeout():
    """A blocked connection confirms nothing; once the broker unblocks it, the waits
    for confirms (and for an ack after nacks) start over from then."""
    book = ledger([A])
    send_row(book, 1)
    book.stalled(0.0, 10.0)
    book.restart_wait(60.0)  # blocked from 5 to 60
    assert book.stalled(65.0, 10.0) is False
    assert book.stalled(70.5, 10.0) is True
    nacking = ledger([A])
    nacking.nacked(nacking.sent(1, A), False, now=0.0)
    nacking.restart_wait(60.0)
    assert nacking.stalled(69.0, 10.0) is False
    assert nacking.stalled(70.5, 10.0) is True
