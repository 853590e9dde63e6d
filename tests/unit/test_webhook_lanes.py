"""lifecycle_webhook.lanes: a partition's events go out one at a time and in order,
never more than max_in_flight at once, retries wait their time, every event is
eventually handed out; by table, then by random operations against a model."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle_webhook.lanes import Lanes


def test_one_lane_hands_out_its_items_one_at_a_time_in_order():
    lanes = Lanes(max_in_flight=10)
    for item in ("a1", "a2", "a3"):
        lanes.add("a", item, now=0.0)
    assert lanes.take_ready(0.0) == ["a1"]
    assert lanes.take_ready(0.0) == []  # a1 still in flight
    lanes.done("a")
    assert lanes.take_ready(0.0) == ["a2"]
    lanes.done("a")
    assert lanes.take_ready(0.0) == ["a3"]
    lanes.done("a")
    assert (lanes.held, lanes.lanes, lanes.in_flight) == (0, 0, 0)
    assert lanes.take_ready(0.0) == []


def test_lanes_go_on_independently_in_the_order_they_became_ready():
    lanes = Lanes(max_in_flight=10)
    lanes.add("b", "b1", 0.0)
    lanes.add("a", "a1", 0.0)
    lanes.add("b", "b2", 0.0)
    lanes.add("c", "c1", 0.0)
    assert lanes.take_ready(0.0) == ["b1", "a1", "c1"]
    lanes.done("a")
    lanes.add("a", "a2", 0.0)  # a new lane "a": ready behind the others to come
    lanes.done("b")            # b2 ready now
    lanes.add("d", "d1", 0.0)
    assert lanes.take_ready(0.0) == ["a2", "b2", "d1"]


def test_never_more_than_max_in_flight_and_fair_among_lanes():
    lanes = Lanes(max_in_flight=2)
    for key in "abcd":
        for n in (1, 2):
            lanes.add(key, f"{key}{n}", 0.0)
    assert lanes.take_ready(0.0) == ["a1", "b1"]
    assert lanes.take_ready(0.0) == []
    assert lanes.in_flight == 2
    lanes.done("a")  # a2 is ready, but c and d were waiting before it
    assert lanes.take_ready(0.0) == ["c1"]
    lanes.done("b")
    lanes.done("c")
    assert lanes.take_ready(0.0) == ["d1", "a2"]


def test_a_retried_head_waits_for_its_time_and_holds_its_lane_back():
    lanes = Lanes(max_in_flight=10)
    lanes.add("a", "a1", 0.0)
    lanes.add("a", "a2", 0.0)
    lanes.add("b", "b1", 0.0)
    assert lanes.take_ready(0.0) == ["a1", "b1"]
    lanes.retry("a", at=5.0)
    assert (lanes.in_flight, lanes.waiting_retry, lanes.next_due()) == (1, 1, 5.0)
    assert lanes.take_ready(4.9) == []
    lanes.done("b")
    assert lanes.take_ready(4.99) == []
    assert lanes.take_ready(5.0) == ["a1"]  # the same head again, never a2 first
    assert (lanes.waiting_retry, lanes.next_due()) == (0, None)
    lanes.done("a")
    assert lanes.take_ready(5.0) == ["a2"]


def test_retries_come_due_in_order_of_their_time():
    lanes = Lanes(max_in_flight=1)
    for key in "abc":
        lanes.add(key, key, 0.0)
    for key, at in zip("abc", (30.0, 10.0, 20.0)):
        assert lanes.take_ready(0.0) == [key]
        lanes.retry(key, at)
    assert lanes.next_due() == 10.0
    assert lanes.take_ready(100.0) == ["b"]
    lanes.done("b")
    assert lanes.take_ready(100.0) == ["c"]
    lanes.done("c")
    assert lanes.take_ready(100.0) == ["a"]


def test_counts_and_oldest_added():
    lanes = Lanes(max_in_flight=5)
    assert lanes.oldest_added() is None
    lanes.add("a", "a1", 10.0)
    lanes.add("b", "b1", 11.0)
    lanes.add("a", "a2", 12.0)
    assert (lanes.held, lanes.lanes, lanes.in_flight, lanes.waiting_retry) == (3, 2, 0, 0)
    assert lanes.oldest_added() == 10.0
    lanes.take_ready(20.0)
    assert (lanes.held, lanes.in_flight) == (3, 2)
    lanes.done("a")
    assert lanes.oldest_added() == 11.0
    lanes.done("b")
    assert lanes.oldest_added() == 12.0
    assert (lanes.held, lanes.lanes, lanes.in_flight) == (1, 1, 0)


def test_add_without_now_takes_the_monotonic_clock():
    lanes = Lanes(max_in_flight=1)
    before = time.monotonic()
    lanes.add("a", "a1")
    assert before <= lanes.oldest_added() <= time.monotonic()


def test_clear_returns_everything_held_and_starts_over():
    lanes = Lanes(max_in_flight=2)
    for item in ("a1", "a2", "b1", "c1"):
        lanes.add(item[0], item, 0.0)
    lanes.take_ready(0.0)
    lanes.retry("a", 50.0)
    assert sorted(lanes.clear()) == ["a1", "a2", "b1", "c1"]
    assert (lanes.held, lanes.lanes, lanes.in_flight, lanes.waiting_retry) == (0, 0, 0, 0)
    assert (lanes.next_due(), lanes.oldest_added()) == (None, None)
    assert lanes.take_ready(100.0) == []
    lanes.add("a", "a1", 1.0)
    assert lanes.take_ready(1.0) == ["a1"]


def test_done_or_retry_of_a_lane_with_nothing_in_flight_is_an_error():
    lanes = Lanes(max_in_flight=1)
    with pytest.raises(KeyError):
        lanes.done("a")
    lanes.add("a", "a1", 0.0)
    with pytest.raises(KeyError):
        lanes.done("a")  # not handed out yet
    lanes.take_ready(0.0)
    lanes.retry("a", 1.0)
    with pytest.raises(KeyError):
        lanes.retry("a", 2.0)
    lanes.take_ready(1.0)
    lanes.done("a")
    with pytest.raises(KeyError):
        lanes.done("a")


def test_max_in_flight_must_be_positive():
    with pytest.raises(ValueError):
        Lanes(0)


def test_a_large_backlog_waiting_to_retry_holds_back_no_ready_lane():
    """20,000 lanes waiting to retry, then 20,000 ready ones, handed out 5 at a time
    (8,000 takes, each looking only at the ready lanes and the retry heap's top: a take
    that scanned every lane would make this test take minutes)."""
    lanes = Lanes(max_in_flight=5)
    for n in range(20_000):
        lanes.add(f"w{n}", f"w{n}", 0.0)
    while batch := lanes.take_ready(0.0):
        for key in batch:
            lanes.retry(key, 1e9)
    assert lanes.waiting_retry == 20_000
    for n in range(20_000):
        lanes.add(f"r{n}", f"r{n}", 0.0)
    sent = []
    while batch := lanes.take_ready(1.0):
        sent.extend(batch)
        for key in batch:
            lanes.done(key)
    assert sent == [f"r{n}" for n in range(20_000)]
    assert (lanes.held, lanes.waiting_retry, lanes.in_flight) == (20_000, 20_000, 0)


# -- random operations against a model ------------------------------------------------

KEYS = ("a", "b", "c", "d", "e")
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(KEYS)),
    st.tuples(st.just("take"), st.floats(0, 5)),          # time passes, then a take
    st.tuples(st.just("done"), st.integers(0, 10)),       # which in-flight item
    st.tuples(st.just("retry"), st.integers(0, 10), st.floats(0, 10)),
), max_size=80)


class Model:
    """What must hold, kept the plain way: every item added, per key in order; what is
    done; what is in flight; when each waiting key may go again."""

    def __init__(self, max_in_flight):
        self.lanes = Lanes(max_in_flight)
        self.max_in_flight = max_in_flight
        self.now = 0.0
        self.added: dict[str, list] = {key: [] for key in KEYS}
        self.done_count = {key: 0 for key in KEYS}  # items done, per key, from the front
        self.in_flight: list = []                     # items, in the order taken
        self.not_before: dict[str, float] = {}        # key -> retry time, till due
        self.added_at: dict = {}
        self.sent: list = []

    def add(self, key):
        item = (key, len(self.added[key]))
        self.added[key].append(item)
        self.added_at[item] = self.now
        self.lanes.add(key, item, self.now)

    def take(self, dt):
        self.now += dt
        taken = self.lanes.take_ready(self.now)
        for item in taken:
            key, n = item
            # The head of its lane: every earlier item of the key is done.
            assert n == self.done_count[key]
            assert all(k != key for k, _ in self.in_flight)
            assert self.not_before.get(key, 0.0) <= self.now
            self.in_flight.append(item)
            self.sent.append(item)
        # Retries come due are ready now, no longer waiting.
        self.not_before = {k: t for k, t in self.not_before.items() if t > self.now}
        assert len(self.in_flight) <= self.max_in_flight
        if len(self.in_flight) < self.max_in_flight:
            # Nothing left behind that could have gone.
            flying = {k for k, _ in self.in_flight}
            for key in KEYS:
                pending = len(self.added[key]) > self.done_count[key]
                due = self.not_before.get(key, 0.0) <= self.now
                assert not (pending and due and key not in flying), key

    def finish(self, index, retry_at=None):
        if not self.in_flight:
            return
        key, _ = item = self.in_flight.pop(index % len(self.in_flight))
        if retry_at is None:
            self.lanes.done(key)
            self.done_count[key] += 1
            del self.added_at[item]
        else:
            self.lanes.retry(key, self.now + retry_at)
            self.not_before[key] = self.now + retry_at

    def check_counts(self):
        held = sum(len(items) for items in self.added.values()) - sum(self.done_count.values())
        assert self.lanes.held == held
        assert self.lanes.in_flight == len(self.in_flight)
        assert self.lanes.lanes == sum(
            1 for key in KEYS if len(self.added[key]) > self.done_count[key])
        assert self.lanes.waiting_retry == len(self.not_before)
        assert self.lanes.next_due() == min(self.not_before.values(), default=None)
        assert self.lanes.oldest_added() == min(self.added_at.values(), default=None)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(max_in_flight=st.integers(1, 4), operations=OPERATIONS)
def test_random_operations_keep_order_bound_and_progress(max_in_flight, operations):
    model = Model(max_in_flight)
    for op, *args in operations:
        if op == "add":
            model.add(*args)
        elif op == "take":
            model.take(*args)
        elif op == "done":
            model.finish(args[0])
        else:
            model.finish(args[0], retry_at=args[1])
        model.check_counts()
    # Then every answer is an acceptance: everything held is eventually handed out,
    # each key's items in the order they were added, each exactly once more than
    # it was retried.
    while model.lanes.held:
        due = model.lanes.next_due()
        model.take(0.0 if due is None or due <= model.now else due - model.now)
        while model.in_flight:
            model.finish(0)
        model.check_counts()
    for key in KEYS:
        assert model.done_count[key] == len(model.added[key])
        sent = [item for item in model.sent if item[0] == key]
        assert sorted(sent) == sent
        assert set(sent) == set(model.added[key])
    assert model.lanes.take_ready(model.now + 1e6) == []


def test_a_limit_holds_back_all_but_that_many_in_flight():
    """While the endpoint fails the service probes it one request at a time."""
    lanes = Lanes(max_in_flight=8)
    for key in "abcd":
        lanes.add(key, key + "1", 0.0)
    assert lanes.take_ready(0.0, limit=1) == ["a1"]
    assert lanes.take_ready(0.0, limit=1) == []  # a1 still in flight
    lanes.retry("a", 5.0)
    assert lanes.take_ready(1.0, limit=1) == ["b1"]
    lanes.done("b")
    assert lanes.take_ready(6.0) == ["c1", "d1", "a1"]  # no limit: every ready lane


def test_a_settling_head_frees_its_slot_and_holds_its_lane():
    """A refused event's dead letter awaits the broker's confirm: another lane may use
    the slot, its own lane's next event waits for ``done``."""
    lanes = Lanes(max_in_flight=1)
    lanes.add("a", "a1", 0.0)
    lanes.add("a", "a2", 0.0)
    lanes.add("b", "b1", 0.0)
    assert lanes.take_ready(0.0) == ["a1"]
    lanes.settling("a")
    assert lanes.in_flight == 0 and lanes.held == 3
    assert lanes.take_ready(0.0) == ["b1"]  # a2 waits
    lanes.done("b")
    assert lanes.take_ready(0.0) == []
    lanes.done("a")  # the dead letter confirmed
    assert lanes.take_ready(0.0) == ["a2"]
    with pytest.raises(KeyError):
        lanes.settling("b")  # nothing in flight there
