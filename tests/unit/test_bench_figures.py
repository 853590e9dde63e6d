"""The benchmarks' figures: ratios to the limit and the baseline, targets relative to
the limit, and --compare's verdicts between two runs."""

from __future__ import annotations

import json

from benchmarks import compare
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
