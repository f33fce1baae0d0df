"""The tables of benchmarks.e2e: estimated against measured iteration and call times, before and
after calibration, and the rank correlation of the plans."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from estimator import CostModel, Profile, save_profile, simulate_plan
from estimator.calibrate import RunData, calibrate, relative_error, spearman
from plans import Allocation, Plan
from plans.metrics import MetricsRow


@dataclass
class Entry:
    label: str
    method: str
    allocations: dict[str, Allocation]
    runs: list[dict] = field(default_factory=list)  # {"dir", "rows", "shares", "waited_s", "round"}


def clean_rows(
    entry: Entry, foreign_max: float, skip: int = 1, rounds: tuple[int, ...] | None = None
) -> tuple[list[MetricsRow], bool]:
    """Iterations (after the warm-up) of the runs of a plan (those of `rounds`, default all)
    that other jobs did not disturb; when there are none, every iteration after the warm-up,
    flagged."""
    rows, loaded = [], []
    for run in entry.runs:
        if rounds is not None and run.get("round", 0) not in rounds:
            continue
        for raw, share in zip(run["rows"], run["shares"], strict=True):
            r = MetricsRow.model_validate(raw)
            if r.iteration < skip:
                continue
            (rows if share <= foreign_max else loaded).append(r)
    return (rows, True) if rows else (loaded, False)


def layout_key(allocs: dict[str, Allocation]) -> tuple:
    """What makes two plans the same plan: every call's allocation, in call-name order."""
    return tuple(allocs[c].label() for c in sorted(allocs))


def result_folders(path: Path) -> list[Path]:
    """The experiment folders of a benchmarks.e2e results.json, or of a --matrix folder."""
    if path.is_file():
        return [path.parent]
    return sorted(p.parent for p in path.glob("*/results.json"))


def load_entries(folder: Path) -> tuple[list[Entry], dict]:
    """The plans of an experiment folder with their runs, and its results.json document."""
    doc = json.loads((folder / "results.json").read_text())
    return [Entry(e["label"], e["method"], {}, e["runs"]) for e in doc["entries"]], doc


# ---- analysis ------------------------------------------------------------------------------
def estimates(plan: Plan, profile: Profile) -> tuple[float, dict[str, float]]:
    cm = CostModel(plan.cluster, plan.experiment, profile)
    res = simulate_plan(cm, plan)
    return res.iteration_time_s, dict(res.call_time_s)


def medians(rows: list[MetricsRow], call_names) -> dict:
    """Median iteration time and median compute time of each call present in every row."""
    return {
        "iteration": statistics.median(r.iteration_s for r in rows),
        "calls": {
            c: statistics.median(r.calls[c].compute_s for r in rows)
            for c in call_names
            if all(c in r.calls for r in rows)
        },
    }


def repeatability(entries: list[Entry], call_names, foreign_max: float) -> dict | None:
    """How well the first two rounds of runs agree: Spearman of their iteration medians and the
    median |relative difference| of their call medians (round 1 against round 2). The
    estimates cannot be held to a ranking or an error the runs themselves do not repeat to.
    None with fewer than two rounds."""
    if not all(any(run.get("round", 0) == 1 for run in e.runs) for e in entries):
        return None
    per = [[medians(clean_rows(e, foreign_max, rounds=(k,))[0], call_names) for k in (0, 1)]
           for e in entries]  # fmt: skip
    diffs = [
        abs(relative_error(a["calls"][c], b["calls"][c]))
        for a, b in per
        for c in a["calls"]
        if c in b["calls"]
    ]
    return {
        "spearman": spearman([a["iteration"] for a, _ in per], [b["iteration"] for _, b in per]),
        "calls": statistics.median(diffs),
    }


def _fmt_err(e: float) -> str:
    return f"{e:+.0%}" if math.isfinite(e) else "-"


def analyze(entries: list[Entry], plans: dict[str, Plan], base: Profile, args, out_dir: Path):
    """Print the tables; returns the summary figures."""
    call_names = tuple(plans[entries[0].label].allocations)  # the experiment's calls
    measured: dict[str, dict] = {}
    for e in entries:
        rows, clean = clean_rows(e, args.foreign_max)
        shares = [s for run in e.runs for r, s in zip(run["rows"], run["shares"], strict=True)
                  if r["iteration"] >= 1]  # fmt: skip
        measured[e.label] = medians(rows, call_names) | {
            "n": len(rows),
            "clean": clean,
            "foreign": statistics.median(shares) if shares else math.nan,
        }
    cal_labels = [] if args.calibrate_on == "none" else args.calibrate_on.split(",")
    cal_label = ", ".join(cal_labels)
    profiles = {"base": base}
    if cal_labels:
        runs = []
        for label in cal_labels:
            e = next((x for x in entries if x.label == label), None)
            if e is None:
                raise SystemExit(f"--calibrate-on {label}: no such plan")
            rows, _ = clean_rows(e, args.foreign_max)
            runs.append(RunData(plans[label], rows, e.runs[-1]["dir"]))
        cal, fit = calibrate(base, runs, command="benchmarks/e2e.py")
        profiles["calibrated"] = cal
        save_profile(cal, out_dir / "calibrated-profile.json")
    est = {k: {e.label: estimates(plans[e.label], p) for e in entries} for k, p in profiles.items()}
    final = "calibrated" if cal_label else "base"
    held = [e.label for e in entries if e.label not in cal_labels]

    print(f"\nexperiment {plans[entries[0].label].experiment.name}: "
          f"{plans[entries[0].label].cluster.label()}; base profile {base.id}")  # fmt: skip
    if cal_label:
        c = profiles["calibrated"].calibration
        print(f"calibrated on the run(s) of {cal_label} only -> {profiles['calibrated'].id}:")
        for kind, f in c.kinds.items():
            print(f"  {kind:<9} scale {f.scale:.3f}  overhead {f.overhead_s * 1e3:.2f} ms/pass  "
                  f"({f.samples} calls; error {f.error_before:.0%} -> {f.error_after:.0%})")  # fmt: skip
        print(f"  communication scale {c.comm_scale:.3f}; fitted: {', '.join(c.fitted)}")
        for n in fit.notes:
            print(f"  ({n})")
        if c.rule_reward_s_per_seq is not None:
            print(f"  rule reward {c.rule_reward_s_per_seq * 1e6:.0f} us/sequence")
    print("\niteration time, seconds (medians over clean iterations >= 1)")
    head = f"{'plan':<11}{'est base':>9}{'est cal':>9}{'measured':>9}{'err':>7}  iters  other jobs"
    print(head if cal_label else head.replace(f"{'est cal':>9}", ""))
    for e in entries:
        m = measured[e.label]
        eb = est["base"][e.label][0]
        ef = est[final][e.label][0]
        cols = f"{e.label:<11}{eb:9.2f}" + (f"{ef:9.2f}" if cal_label else "")
        flag = "" if m["clean"] else " (loaded)"
        print(f"{cols}{m['iteration']:9.2f}{_fmt_err(relative_error(ef, m['iteration'])):>7}  "
              f"{m['n']:>5}  {m['foreign']:.1%}{flag}"
              + ("  <- calibration run" if e.label in cal_labels else ""))  # fmt: skip
    print("\nper call, base profile: estimated s, measured s (median compute_s), error")
    print(f"{'plan':<11}" + "".join(f"{c:>19}" for c in call_names))
    for e in entries:
        m = measured[e.label]["calls"]
        cells = []
        for c in call_names:
            eb = est["base"][e.label][1][c]
            txt = f"{eb:.2f} {m[c]:.2f} {_fmt_err(relative_error(eb, m[c])):>4}" if c in m else "-"
            cells.append(f"{txt:>19}")
        print(f"{e.label:<11}" + "".join(cells))
    if cal_label:
        print("\nper call, calibrated profile: estimated s, error")
        print(f"{'plan':<11}" + "".join(f"{c:>14}" for c in call_names))
        for e in entries:
            m = measured[e.label]["calls"]
            cells = []
            for c in call_names:
                ef = est[final][e.label][1][c]
                txt = f"{ef:.2f} {_fmt_err(relative_error(ef, m[c])):>4}" if c in m else "-"
                cells.append(f"{txt:>14}")
            print(f"{e.label:<11}" + "".join(cells))
    print("\nplans (mesh, dp/tp/pp, micro-batches, +z1: ZeRO-1):")
    for e in entries:
        print(f"  {e.label:<10} " + ", ".join(
            f"{c} {plans[e.label].allocations[c].label()}" for c in call_names))  # fmt: skip

    summary: dict = {}
    for kind, labels in (("all plans", [e.label for e in entries]), ("held out", held)):
        if kind == "held out" and not cal_label:
            continue
        for pname in profiles:
            xs = [est[pname][lb][0] for lb in labels]
            ys = [measured[lb]["iteration"] for lb in labels]
            per_call = {
                c: statistics.median(
                    abs(relative_error(est[pname][lb][1][c], measured[lb]["calls"][c]))
                    for lb in labels
                    if c in measured[lb]["calls"]
                )
                for c in call_names
                if any(c in measured[lb]["calls"] for lb in labels)
            }
            everything = [
                abs(relative_error(est[pname][lb][1][c], measured[lb]["calls"][c]))
                for lb in labels
                for c in measured[lb]["calls"]
            ]
            it_err = statistics.median(
                abs(relative_error(x, y)) for x, y in zip(xs, ys, strict=True)
            )
            summary[(kind, pname)] = {
                "spearman": spearman(xs, ys),
                "iteration_error": it_err,
                "per_call": per_call,
                "all_calls": statistics.median(everything),
                "errors": everything,
                "iterations": list(zip(xs, ys, strict=True)),  # (estimated, measured)
                "n": len(labels),
            }
    print("\nsummary (median |relative error|)")
    for (kind, pname), s in summary.items():
        calls = ", ".join(f"{c} {v:.0%}" for c, v in s["per_call"].items())
        print(f"  {kind} ({s['n']}), {pname} profile: Spearman {s['spearman']:.3f}; iteration "
              f"{s['iteration_error']:.1%}; calls {s['all_calls']:.1%} ({calls})")  # fmt: skip
    rep = repeatability(entries, call_names, args.foreign_max)
    if rep is not None:
        summary["repeatability"] = rep
        print(f"  the runs against themselves (round 1 vs round 2): Spearman "
              f"{rep['spearman']:.3f}; calls {rep['calls']:.1%}")  # fmt: skip
    fastest = min(entries, key=lambda e: measured[e.label]["iteration"])
    sm, fm = measured["searched"]["iteration"], measured[fastest.label]["iteration"]
    print(f"searched plan: {sm:.2f} s measured; fastest measured: {fastest.label} {fm:.2f} s "
          f"(searched is {sm / fm - 1:+.1%})")  # fmt: skip
    return summary
