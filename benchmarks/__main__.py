"""``python -m benchmarks``: run the scenarios against the real parts, print the table
and write bench-results/results.json.

  --only NAME          one scenario (publish, apply, latency, publish-inprocess,
                       latency-inprocess, storm, memory, webhook; fleet, cluster and
                       faults run only when named)
  --soak-seconds N     length of the memory soak at 1,000 events/s (default 300)
  --quick              a short smoke run with smaller sizes
  --compare OLD.json   run nothing: print the change of each figure from OLD.json to
                       the newest run (or to --against NEW.json)

Each figure is ours beside the limit measured in the same run (the most any agent or
consumer could do on this machine) and the stock way (the baseline); "shape" says
whether the agents ran as processes on libvirtd (production) or in one process with
their hypervisors (in-process: the agents' own cost).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
import traceback

from benchmarks import (apply, cluster, compare, faults, fleet, harness, latency,
                        latency_inprocess, memory, publish, publish_inprocess, storm, webhook)
from consumer.cli import tables

SCENARIOS = {"publish": publish, "apply": apply, "latency": latency,
             "publish-inprocess": publish_inprocess, "latency-inprocess": latency_inprocess,
             "storm": storm, "memory": memory, "fleet": fleet, "cluster": cluster,
             "faults": faults, "webhook": webhook}
# Run when no --only is given; the others take minutes each and run when named.
DEFAULT = ["publish", "apply", "latency", "publish-inprocess", "latency-inprocess", "storm",
           "memory", "webhook"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(SCENARIOS), action="append",
                        help="run only this scenario (repeatable)")
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--results-dir", default=os.path.join(harness.REPO, "bench-results"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's work directory (logs, outboxes)")
    parser.add_argument("--compare", metavar="OLD.json",
                        help="print the change of each figure since OLD.json; runs nothing")
    parser.add_argument("--against", metavar="NEW.json",
                        help="with --compare: the newer run (default: the newest results.json)")
    args = parser.parse_args(argv)
    if args.compare:
        return print_comparison(args.compare,
                                args.against or os.path.join(args.results_dir, "results.json"))

    profile = harness.Profile.make(args.quick, args.soak_seconds)
    run = harness.Run(profile, args.results_dir)
    names = args.only or DEFAULT
    print(f"bench run {run.id}: {', '.join(names)}{' (quick)' if args.quick else ''}; "
          f"logs in {run.workdir}", flush=True)
    sampler = harness.RssSampler().start()
    results: list[harness.ScenarioResult] = []
    failures: dict[str, str] = {}
    started = time.monotonic()
    try:
        for name in names:
            print(f"-- {name} ...", flush=True)
            t0 = time.monotonic()
            try:
                result = SCENARIOS[name].run(run, sampler)
            except Exception as exc:  # noqa: BLE001 - report it, run the other scenarios
                traceback.print_exc()
                failures[name] = f"{type(exc).__name__}: {exc}"
                continue
            result.seconds = time.monotonic() - t0
            for row in result.rows:
                row.shape = row.shape or getattr(SCENARIOS[name], "SHAPE", harness.PRODUCTION)
            results.append(result)
            print(f"   {name} done in {result.seconds:.0f}s", flush=True)
    finally:
        sampler.stop()
        run.cleanup()
    total = time.monotonic() - started
    rows = [r for res in results for r in res.rows]
    print()
    print(format_table(rows))
    for name, error in failures.items():
        print(f"{name}: FAILED: {error}")
    path = write_json(run, args, results, failures, total)
    print(f"\n{len(rows)} figures, {sum(1 for r in rows if r.met is False)} targets missed, "
          f"{len(failures)} scenarios failed; {total:.0f}s in all; results in {path}")
    if not args.keep:
        _remove_work(run)
    return 1 if failures else 0


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "" and value in (0.0, 1.0):
        return "yes" if value else "NO"
    if abs(value) >= 100:
        return f"{value:,.0f}{(' ' + unit) if unit else ''}"
    return f"{value:.2f}{(' ' + unit) if unit else ''}"


def format_table(rows: list[harness.Row]) -> str:
    header = ["scenario", "figure", "shape", "target", "ours", "limit", "of limit",
              "baseline", "x baseline", "met?"]
    cells = []
    for r in rows:
        target = "-" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + _fmt(r.target, r.unit)
        if r.target_of_limit is not None:
            target += f" ({r.target_of_limit:g}x limit)"
        limit = "-" if r.limit is None else _fmt(r.limit, r.unit)
        if r.limit_label:
            limit += f" ({r.limit_label})"
        baseline = "-" if r.baseline is None else _fmt(r.baseline, r.unit)
        if r.baseline_label:
            baseline += f" ({r.baseline_label})"
        of_limit = "-" if r.ratio_to_limit is None else f"{r.ratio_to_limit:.2f}"
        ratio = "-" if r.ratio_to_baseline is None else f"{r.ratio_to_baseline:,.1f}x"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        ours = _fmt(r.ours, r.unit) + (f" [{r.note}]" if r.note else "")
        cells.append(dict(zip(header, [r.scenario, r.name, r.shape, target, ours, limit,
                                       of_limit, baseline, ratio, met])))
    return tables.table(cells, header, right=["target", "ours", "limit", "of limit",
                                              "baseline", "x baseline"])


def print_comparison(old_path: str, new_path: str) -> int:
    documents = []
    for path in (old_path, new_path):
        try:
            with open(path) as f:
                documents.append(json.load(f))
        except (OSError, ValueError) as exc:
            print(f"benchmarks: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    old, new = documents
    rows = []
    for c in compare.changes(old["rows"], new["rows"]):
        change = "-" if c["change"] is None else f"{c['change']:+.0%}"
        rows.append({"scenario": c["scenario"], "figure": c["name"],
                     "old": _fmt(c["old"], c["unit"]), "new": _fmt(c["new"], c["unit"]),
                     "change": change, "verdict": c["verdict"]})
    print(f"from run {old.get('run_id')} ({old_path}) to run {new.get('run_id')} ({new_path}); "
          f"changes within ±{compare.NOISE:.0%} are noise on this machine")
    print(tables.table(rows, ["scenario", "figure", "old", "new", "change", "verdict"],
                       right=["old", "new", "change"]))
    return 0


def write_json(run, args, results, failures, total) -> str:
    os.makedirs(args.results_dir, exist_ok=True)
    document = {
        "run_id": run.id, "quick": args.quick, "soak_seconds": run.profile.soak_seconds,
        "started": run.id[:15], "seconds": total,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "profile": dataclasses.asdict(run.profile),
        "rows": [dataclasses.asdict(r) for res in results for r in res.rows],
        "scenarios": {res.name: {"seconds": res.seconds, "details": res.details}
                      for res in results},
        "failures": failures,
    }
    # results.json is the newest run; each run is also kept under its own id, so that
    # a run of one scenario does not lose the figures of the run before it.
    path = os.path.join(args.results_dir, "results.json")
    for target in (path, os.path.join(args.results_dir, f"results-{run.id}.json")):
        with open(target, "w") as f:
            json.dump(document, f, indent=2, default=str)
    return path


def _remove_work(run) -> None:
    import shutil
    shutil.rmtree(run.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
