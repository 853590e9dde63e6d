"""lab.waiting.wait_for: the one wait of the tests, the benchmarks and the demo."""

from __future__ import annotations

import itertools

import pytest

from lab.waiting import wait_for


def test_it_returns_what_the_predicate_returned_once_truthy():
    answers = iter([None, 0, "", {"found": 1}])
    assert wait_for(lambda: next(answers), timeout=5, interval=0) == {"found": 1}


def test_it_times_out_with_the_callers_error_naming_what_it_waited_for():
    with pytest.raises(LookupError, match=r"^timed out after 0.05s waiting for the queue$"):
        wait_for(lambda: False, 0.05, "the queue", 0.01, error=LookupError)


def test_the_message_may_be_read_only_at_the_end():
    said = []
    with pytest.raises(TimeoutError, match="waiting for 3 rows"):
        wait_for(lambda: False, 0.02, lambda: said.append(1) or "3 rows", 0.005)
    assert said == [1]


def test_without_a_message_it_names_the_predicate():
    def the_broker_up():
        return False
    with pytest.raises(TimeoutError, match="waiting for the_broker_up$"):
        wait_for(the_broker_up, 0.01, interval=0.005)


def test_a_watch_ends_the_wait_early():
    def watch():
        raise RuntimeError("the consumer exited")
    with pytest.raises(RuntimeError, match="the consumer exited"):
        wait_for(lambda: False, 60, "the consumer", watch=watch)


def test_errors_it_is_told_to_ignore_count_as_not_yet_and_the_last_is_named():
    calls = itertools.count()

    def probe():
        if next(calls) < 2:
            raise ConnectionRefusedError("not listening yet")
        return "up"
    assert wait_for(probe, 5, "the node", 0, ignoring=(OSError,)) == "up"
    with pytest.raises(TimeoutError, match=r"waiting for the node \(last error: nope\)$"):
        wait_for(lambda: (_ for _ in ()).throw(OSError("nope")), 0.02, "the node", 0.005,
                 ignoring=(OSError,))
    with pytest.raises(KeyError):  # not told to ignore it: it ends the wait
        wait_for(lambda: {}["x"], 5, "the node", 0, ignoring=(OSError,))
