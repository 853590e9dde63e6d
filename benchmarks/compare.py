"""``--compare OLD.json``: each figure of two runs side by side, matched by scenario and
name, with its change and whether that is better or worse. Pure: dicts in, dicts out."""

from __future__ import annotations

# A change within this share either way is shown as "same": the machine's runs differ
# by about ±20% (README, Benchmarks).
NOISE = 0.2


def _key(row: dict) -> tuple[str, str]:
    return row["scenario"], row.get("name", row.get("figure", ""))  # older runs: "figure"


def changes(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """One entry a figure of either run, in the new run's order, then those only the old
    run had."""
    old = {_key(r): r for r in old_rows}
    new_keys = [_key(r) for r in new_rows]
    out = []
    for row in new_rows:
        before = old.get(_key(row))
        out.append(_change(row, before))
    for key, before in old.items():
        if key not in new_keys:
            out.append({"scenario": key[0], "name": key[1], "unit": before.get("unit", ""),
                        "old": before.get("ours"), "new": None, "change": None,
                        "verdict": "gone"})
    return out


def _change(row: dict, before: dict | None) -> dict:
    new, old = row.get("ours"), None if before is None else before.get("ours")
    entry = {"scenario": row["scenario"], "name": _key(row)[1], "unit": row.get("unit", ""),
             "old": old, "new": new, "change": None, "verdict": "new" if before is None else "-"}
    if old is None or new is None:
        return entry
    if row.get("unit", "") == "":  # a yes/no check
        entry["verdict"] = "same" if bool(old) == bool(new) else ("fixed" if new else "BROKEN")
        return entry
    if old == 0:
        entry["verdict"] = "same" if new == 0 else "changed"
        return entry
    change = (new - old) / abs(old)
    entry["change"] = change
    better = change > 0 if row.get("higher_is_better", True) else change < 0
    entry["verdict"] = "same" if abs(change) <= NOISE else ("better" if better else "WORSE")
    return entry
