"""The same plans measured twice: how far did the machine move between two benchmarks.e2e runs?

    python -m benchmarks.e2e_drift EARLIER LATER

EARLIER and LATER are results.json files of benchmarks.e2e, or --matrix folders (their
experiments are paired by folder name). Plans are paired by label and compared only where
every call has the same allocation in both (the searched plan may differ when another profile
planned it). For each experiment it prints the ratio later / earlier of the iteration medians
and of the call medians (median and range): the code, plans and profile being the same, that
ratio is the machine's own drift, a floor under any estimate's error on it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.e2e_analysis import (
    Entry,
    clean_rows,
    layout_key,
    load_entries,
    medians,
    result_folders,
)
from plans.io import load_plan


def _entries(folder: Path) -> tuple[dict[str, Entry], float]:
    entries, doc = load_entries(folder)
    return {e.label: e for e in entries}, doc["args"]["foreign_max"]


def _allocations(folder: Path, label: str) -> dict:
    return load_plan(folder / label / "plan.json").allocations


def ratios(earlier: Path, later: Path) -> dict | None:
    """Later / earlier medians of the plans both folders ran with the same layout: {"plans",
    "iterations": [ratios], "calls": [ratios]}; None when no plan pairs up."""
    (ea, fa), (eb, fb) = _entries(earlier), _entries(later)
    its: list[float] = []
    calls: list[float] = []
    plans = []
    for label in sorted(ea.keys() & eb.keys()):
        allocs = _allocations(earlier, label)
        if layout_key(allocs) != layout_key(_allocations(later, label)):
            continue
        ma = medians(clean_rows(ea[label], fa)[0], allocs)
        mb = medians(clean_rows(eb[label], fb)[0], allocs)
        plans.append(label)
        its.append(mb["iteration"] / ma["iteration"])
        calls += [mb["calls"][c] / ma["calls"][c] for c in ma["calls"] if c in mb["calls"]]
    return {"plans": plans, "iterations": its, "calls": calls} if plans else None


def _spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} ({min(xs):.2f}-{max(xs):.2f}, {len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("earlier", type=Path, help="results.json or --matrix folder")
    ap.add_argument("later", type=Path, help="results.json or --matrix folder")
    args = ap.parse_args()
    a = {f.name: f for f in result_folders(args.earlier)}
    b = {f.name: f for f in result_folders(args.later)}
    shared = sorted(a.keys() & b.keys())
    if not shared:
        raise SystemExit(f"no experiment is in both {args.earlier} and {args.later}")
    print("later / earlier, same plans (median (range, count))")
    for name in shared:
        r = ratios(a[name], b[name])
        if r is None:
            print(f"  {name}: no plan with the same layout in both")
            continue
        print(f"  {name}: {len(r['plans'])} plans; iterations {_spread(r['iterations'])}; "
              f"calls {_spread(r['calls'])}")  # fmt: skip


if __name__ == "__main__":
    main()
