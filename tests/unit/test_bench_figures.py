"""The benchmarks' figures: ratios to the limit and the baseline, targets relative to
the limit, --compare's verdicts between two runs, and what apply counts in a full
queue."""

from __future__ import annotations

import json

from benchmarks import compare
from benchmarks.apply import QueueAccount
from benchmarks.__main__ import main as bench_main
from benchmarks.harness import Row


def test_a_target_relative_to_the_limit_is_set_from_it():
    row = Row("publish", "events/s", "events/s", 6000, target_of_limit=0.9, limit=8000,
              baseline=1000)
    assert row.target == 7200 and row.met is False
    assert row.ratio_to_limit == 0.75 and row.ratio_to_baseline == 6.0


def test_lower_is_better_ratios_and_targets():
    row = Row("latency", "p99", "ms", 20, target=25, higher_is_better=False, baseline=600_000)
    assert row.met is True and row.ratio_to_baseline == 30_000 and row.ratio_to_limit is None


def rows(**values):
    return [{"scenario": "s", "name": name, "unit": unit, "ours": ours,
             "higher_is_better": hib} for name, (unit, ours, hib) in values.items()]


def test_compare_says_better_worse_or_same_within_the_noise():
    old = rows(rate=("events/s", 1000, True), p99=("ms", 20, False), ok=("", 1.0, True),
               dropped=("ms", 5, False))
    new = rows(rate=("events/s", 1300, True), p99=("ms", 30, False), ok=("", 0.0, True),
               added=("MB", 50, False))
    got = {c["name"]: c for c in compare.changes(old, new)}
    assert got["rate"]["verdict"] == "better" and round(got["rate"]["change"], 2) == 0.3
    assert got["p99"]["verdict"] == "WORSE"
    assert got["ok"]["verdict"] == "BROKEN"
    assert got["added"]["verdict"] == "new" and got["dropped"]["verdict"] == "gone"
    same = compare.changes(rows(rate=("events/s", 1000, True)), rows(rate=("events/s", 1100, True)))
    assert same[0]["verdict"] == "same"


def test_compare_reads_runs_older_than_the_name_field():
    old = [{"scenario": "s", "figure": "rate", "unit": "events/s", "ours": 100}]
    [change] = compare.changes(old, rows(rate=("events/s", 200, True)))
    assert change["old"] == 100 and change["verdict"] == "better"


def test_the_command_prints_each_figure_of_two_files(tmp_path, capsys):
    for name, value in (("old", 1000), ("new", 500)):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"run_id": name, "rows": rows(rate=("events/s", value, True))}))
    status = bench_main(["--compare", str(tmp_path / "old.json"),
                         "--against", str(tmp_path / "new.json")])
    out = capsys.readouterr().out
    assert status == 0
    assert "from run old" in out and "-50%" in out and "WORSE" in out


# -- apply: a full queue's messages, accounted for ---------------------------------------

def account(**counts) -> QueueAccount:
    fields = {"events": 40_000, "queued": 40_000, "journaled": 40_000, "inventories": 0,
              "duplicates": 0, "heartbeats": 0}
    return QueueAccount(**{**fields, **counts})


def test_copies_sent_again_after_a_reconnection_are_no_loss():
    # The slower machine's run: an agent's connection given up mid-fill sent its window
    # again (784 copies) after the heartbeat a connection begins with.
    counted = account(queued=40_785, duplicates=784, heartbeats=1, reconnects=1)
    assert counted.ok and counted.lost == 0 and counted.unexplained == 0
    assert counted.describe() == ("40000/40000 events journaled; 40785 messages: copies "
                                  "dropped 784, heartbeats 1 (agent reconnections: 1)")


def test_a_queue_of_exactly_the_events_needs_no_explaining():
    counted = account()
    assert counted.ok and counted.describe() == "40000/40000 events journaled"


def test_events_lost_behind_as_many_copies_are_a_loss():
    # As many messages as events, or more: counting messages would have passed.
    counted = account(queued=40_000, journaled=39_215, duplicates=785)
    assert not counted.ok and counted.lost == 785 and counted.unexplained == 0


def test_a_message_neither_applied_nor_dropped_is_unexplained():
    # Dead-lettered, say: the events are all there, but not every message is.
    counted = account(queued=40_010)
    assert not counted.ok and counted.unexplained == 10
    assert "unexplained 10" in counted.describe()


def test_an_event_journaled_that_the_fill_did_not_make_is_no_match():
    counted = account(queued=40_001, journaled=40_001)
    assert not counted.ok and counted.lost == 0


def test_an_inventory_after_a_libvirt_reconnection_is_accounted_for():
    counted = account(queued=40_001, inventories=1)
    assert counted.ok and "inventories 1" in counted.describe()
