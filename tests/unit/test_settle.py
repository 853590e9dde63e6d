"""settle.BatchSettlement by table: what is applied, in which parts, what is acked, what
is dead-lettered with which reason, and how long a batch is held. No broker, no
database: the database is a table of what it says of each part."""

from __future__ import annotations

import pytest

from consumer.admission import Admitted, Cause, Foreign, Refused
from consumer.settle import Apply, BatchSettlement, Hold, Settled
from lifecycle_common.retry import backoff

UNREADABLE = Refused("body is not JSON", Cause.UNREADABLE)
PUBLISHER = Refused("user 'x' may not speak for host 'h'", Cause.PUBLISHER)
REJECTED = Refused("refused by the database: value too long", Cause.DATABASE)


def admitted(name: str) -> Admitted:
    return Admitted(name)  # the note is opaque to the settlement: a name stands for it


def run(verdicts, database, retry_max=2.0):
    """Settle messages m0, m1, ... with ``verdicts``; ``database(notes, attempt)`` says
    "ok", "away" or "refused" of each part. Returns the parts applied (with what the
    database said), the holds, and the outcome."""
    batch = [f"m{i}" for i in range(len(verdicts))]
    settlement = BatchSettlement(batch, verdicts, retry_max, rand=lambda: 1.0)
    tried, holds = [], []
    step = settlement.next()
    while isinstance(step, Apply):
        said = database(step.notes, len(tried))
        tried.append((" ".join(step.notes), said))
        if said == "ok":
            settlement.applied()
        elif said == "away":
            holds.append(settlement.unavailable())
        else:
            settlement.rejected(REJECTED)
        step = settlement.next()
    assert isinstance(step, Settled)
    return tried, holds, step, settlement


def refuses(*bad):
    """A database that refuses any part holding one of ``bad``."""
    return lambda notes, _: "refused" if set(notes) & set(bad) else "ok"


def ok(notes, _):
    return "ok"


CASES = {
    "all admitted: one part, all acked": (
        [admitted("a"), admitted("b"), admitted("c")], ok,
        [("a b c", "ok")], ["m0", "m1", "m2"], []),
    "refused by admission: dead-lettered, the rest applied and acked": (
        [admitted("a"), Refused("body is not JSON"), admitted("c"), PUBLISHER], ok,
        [("a c", "ok")], ["m0", "m2"], [("m1", UNREADABLE), ("m3", PUBLISHER)]),
    "foreign: acked, nothing applied": (
        [Foreign("nova-compute"), admitted("b")], ok, [("b", "ok")], ["m0", "m1"], []),
    "nothing admitted: nothing applied": (
        [Foreign("nova"), UNREADABLE], ok, [], ["m0"], [("m1", UNREADABLE)]),
    "one message refused by the database: dead-lettered alone": (
        [admitted("a")], refuses("a"), [("a", "refused")], [], [("m0", REJECTED)]),
    "one of five refused: halves, depth first, until it stands alone": (
        [admitted(n) for n in "abcde"], refuses("c"),
        [("a b c d e", "refused"), ("a b", "ok"), ("c d e", "refused"), ("c", "refused"),
         ("d e", "ok")],
        ["m0", "m1", "m3", "m4"], [("m2", REJECTED)]),
    "two refused: each found": (
        [admitted(n) for n in "abcd"], refuses("a", "d"),
        [("a b c d", "refused"), ("a b", "refused"), ("a", "refused"), ("b", "ok"),
         ("c d", "refused"), ("c", "ok"), ("d", "refused")],
        ["m1", "m2"], [("m0", REJECTED), ("m3", REJECTED)]),
    "admission's refusals before the database's in the dead letters": (
        [admitted("a"), admitted("b"), UNREADABLE], refuses("a"),
        [("a b", "refused"), ("a", "refused"), ("b", "ok")],
        ["m1"], [("m2", UNREADABLE), ("m0", REJECTED)]),
    "the database away, then back: the same part again": (
        [admitted("a"), admitted("b")],
        lambda notes, n: "away" if n < 2 else "ok",
        [("a b", "away"), ("a b", "away"), ("a b", "ok")], ["m0", "m1"], []),
    "away while splitting: the half is held, then the split goes on": (
        [admitted(n) for n in "abc"],
        lambda notes, n: "away" if n == 1 else refuses("c")(notes, n),
        [("a b c", "refused"), ("a", "away"), ("a", "ok"), ("b c", "refused"),
         ("b", "ok"), ("c", "refused")],
        ["m0", "m1"], [("m2", REJECTED)]),
}


@pytest.mark.parametrize(("verdicts", "database", "parts", "acked", "dead"),
                         list(CASES.values()), ids=list(CASES))
def test_settlement(verdicts, database, parts, acked, dead):
    tried, _, outcome, _ = run(verdicts, database)
    assert tried == parts
    assert outcome.ack == acked
    assert outcome.dead_letters == dead
    # Every message ends in exactly one of acked and dead-lettered.
    ends = outcome.ack + [m for m, _ in outcome.dead_letters]
    assert sorted(ends) == [f"m{i}" for i in range(len(verdicts))]


def test_foreign_notifications_are_counted():
    *_, settlement = run([Foreign("nova"), Foreign("glance"), admitted("a")], ok)
    assert settlement.foreign == 2


def test_holds_back_off_and_start_over_for_each_part():
    away_thrice_then_refuse_b = [
        "away", "away", "away", "refused",  # a b: held 3 times, then split
        "away", "ok",                       # a: held once (its own back-off from 0)
        "refused"]                          # b: alone
    said = iter(away_thrice_then_refuse_b)
    tried, holds, outcome, _ = run([admitted("a"), admitted("b")],
                                   lambda notes, _: next(said), retry_max=1.5)
    assert [h.attempt for h in holds] == [0, 1, 2, 0]
    assert [h.delay for h in holds] == [backoff(a, 1.5, rand=lambda: 1.0) for a in (0, 1, 2, 0)]
    assert [h.delay for h in holds] == [0.5, 1.0, 1.5, 0.5]  # capped at retry_max
    assert outcome.ack == ["m0"] and outcome.dead_letters == [("m1", REJECTED)]


def test_a_hold_is_a_hold():
    settlement = BatchSettlement(["m0"], [admitted("a")], 2.0, rand=lambda: 0.0)
    assert isinstance(settlement.next(), Apply)
    assert settlement.unavailable() == Hold(0.25, 0)  # half of the step, at the least
    assert settlement.next() == Apply(["a"])


def test_a_refusal_says_which_note_stood_alone():
    settlement = BatchSettlement(["m0", "m1"], [admitted("a"), admitted("b")], 2.0)
    assert settlement.rejected(REJECTED) is None  # split
    assert settlement.next() == Apply(["a"])
    assert settlement.rejected(REJECTED) == "a"


def test_verdicts_must_match_the_batch():
    with pytest.raises(ValueError):
        BatchSettlement(["m0"], [], 2.0)


def test_messages_are_told_apart_by_identity_not_equality():
    """Two deliveries of the same bytes are two messages: one dead-lettered, the other
    still acked."""
    first, second = ["same"], ["same"]
    settlement = BatchSettlement([first, second], [UNREADABLE, admitted("a")], 2.0)
    settlement.next()
    settlement.applied()
    outcome = settlement.next()
    assert outcome.ack == [second] and outcome.ack[0] is second
    assert outcome.dead_letters == [(first, UNREADABLE)]
