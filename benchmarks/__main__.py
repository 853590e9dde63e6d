"""``python -m benchmarks``: run the scenarios against the real parts, print the table
and write bench-results/results.json.

  --only NAME          one scenario (publish, apply, latency, storm, memory; fleet and
                       cluster run only when named)
  --soak-seconds N     length of the memory soak at 1,000 events/s (default 300)
  --quick              a short smoke run with smaller sizes
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

from benchmarks import apply, cluster, fleet, harness, latency, memory, publish, storm
from consumer.cli import tables

SCENARIOS = {"publish": publish, "apply": apply, "latency": latency, "storm": storm,
             "memory": memory, "fleet": fleet, "cluster": cluster}
# Run when no --only is given; the others take minutes each and run when named.
DEFAULT = ["publish", "apply", "latency", "storm", "memory"]


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
    args = parser.parse_args(argv)

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
    header = ["scenario", "figure", "target", "ours", "baseline", "ratio", "met?"]
    cells = []
    for r in rows:
        target = "-" if r.target is None else ("≥ " if r.higher_is_better else "≤ ") + _fmt(r.target, r.unit)
        baseline = "-" if r.baseline is None else _fmt(r.baseline, r.unit)
        if r.baseline_label:
            baseline += f" ({r.baseline_label})"
        ratio = "-" if r.ratio is None else f"{r.ratio:,.1f}x"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        ours = _fmt(r.ours, r.unit) + (f" [{r.note}]" if r.note else "")
        cells.append(dict(zip(header, [r.scenario, r.figure, target, ours, baseline, ratio, met])))
    return tables.table(cells, header, right=["target", "ours", "baseline", "ratio"])


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
