"""Generation running ahead of training: searched plans with staleness k = 0, 1, 2 run side by
side on CPU workers, over three seeds.

    .venv/bin/python -m benchmarks.staleness                      # grpo-tiny, 4 workers, 30 it.
    .venv/bin/python -m benchmarks.staleness --experiment ppo-tiny --iterations 40

Plans: `sync` is what `rlhf-plan search` finds with async.max_staleness = 0; `k=0/1/2` are the
allocations it finds with async.max_staleness = 2, run with each k (the search's own choice is
marked). For each plan and seed (plans interleaved within a seed, so the machine's drift hits
all alike) the table gives the measured iterations/s (median over the iterations after the
first two), the estimate, the reward against samples seen, the version lag and the
rollout/train log-prob gap at k = 0 (and under bfloat16 with --bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.algorithms import _bin, with_changes
from benchmarks.papers import SEEDS, curve, spread
from plans.metrics import FILE, read_metrics

ROOT = Path(__file__).parents[1]
PROFILE = ROOT / "estimator" / "profiles" / "cpu-epyc-2core-1thread_4workers.json"
SKIP = 2  # the first iterations build process groups and views


def search(experiment: str, workers: int, out: Path) -> dict:
    subprocess.run(
        [_bin("rlhf-plan"), "search", experiment, "--nodes", "1", "--gpus-per-node", str(workers),
         "--device", "cpu", "--seed", "0", "--profile", str(PROFILE), "--out", str(out), "--json"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return json.loads(out.read_text())


def run(plan: dict, seed: int, iterations: int, tmp: Path, tag: str) -> list:
    doc = json.loads(json.dumps(plan))
    doc["experiment"]["seed"] = seed
    path = tmp / f"{tag}-{seed}.json"
    path.write_text(json.dumps(doc))
    out = tmp / f"{tag}-{seed}-run"
    subprocess.run(
        [_bin("rlhf-run"), str(path), "--iterations", str(iterations), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return read_metrics(out / FILE)


def with_k(plan: dict, k: int) -> dict:
    doc = json.loads(json.dumps(plan))
    doc["max_staleness"] = k
    doc["estimate"] = None  # searched for another k; `rlhf-plan estimate` prices it again
    return doc


def estimate(plan: dict, tmp: Path, tag: str) -> float | None:
    path = tmp / f"{tag}-estimate.json"
    path.write_text(json.dumps(plan))
    out = subprocess.run(
        [_bin("rlhf-plan"), "estimate", str(path), "--profile", str(PROFILE), "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout).get("iteration_time_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="grpo-tiny")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    ap.add_argument("--bf16", action="store_true", help="also the k = 0 gap under bfloat16")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        sync_exp = with_changes(a.experiment, tmp, "sync", **{"async": {"max_staleness": 0}})
        async_exp = with_changes(a.experiment, tmp, "async", **{"async": {"max_staleness": 2}})
        sync = search(sync_exp, a.workers, tmp / "sync.json")
        best = search(async_exp, a.workers, tmp / "async.json")
        chosen = best.get("max_staleness", 0)
        plans = {"sync": sync, **{f"k={k}": with_k(best, k) for k in (0, 1, 2)}}
        if a.bf16:
            b = json.loads(json.dumps(with_k(best, 0)))
            b["experiment"]["dtype"] = "bfloat16"
            plans["k=0 bf16"] = b
        est = {tag: estimate(p, tmp, tag.replace(" ", "-")) for tag, p in plans.items()}
        rows: dict[str, list[list]] = {tag: [] for tag in plans}
        for seed in a.seeds:
            for tag, plan in plans.items():  # interleaved: drift hits every plan alike
                rows[tag].append(run(plan, seed, a.iterations, tmp, tag.replace(" ", "-")))
        per_it = best["experiment"]["batch_size"] * best["experiment"].get("group_size", 1)
        marks = tuple(per_it * i for i in (a.iterations // 3, 2 * a.iterations // 3, a.iterations))
        base = None
        print(
            f"{a.experiment}, {a.workers} CPU workers, {a.iterations} iterations, seeds "
            f"{a.seeds}; the search chose k={chosen} within async.max_staleness = 2"
        )
        for tag, runs in rows.items():
            rate = [1 / statistics.median(r.iteration_s for r in rs[SKIP:]) for rs in runs]
            base = base or statistics.mean(rate)
            e = est[tag]
            lag = [r.stat("version_lag") for r in runs[0]]
            gap = [r.stat("logprob_gap_max") for rs in runs for r in rs]
            gap_txt = f"gap max {max(g for g in gap if g is not None):.1e}" if any(gap) else ""
            curves = [curve(rs, "reward_mean", per_it, marks) for rs in runs]
            cells = "; ".join(f"{m} samples {spread([c[m] for c in curves])}" for m in marks)
            mark = " (searched)" if tag == f"k={chosen}" else ""
            print(
                f"{tag + mark:<16} it/s {spread(rate)} ({statistics.mean(rate) / base:.2f}x sync)"
                f"  estimate {'-' if e is None else f'{1 / e:.2f}'} it/s  lag {lag[:4]}  "
                f"{gap_txt}\n{'':<16} reward_mean at {cells}",
                flush=True,
            )


if __name__ == "__main__":
    main()
