"""The seed papers' claims in the small: each variant planned with `rlhf-plan search` and run
with `rlhf-run` on CPU workers over three seeds (model init and sampling), reported as the
mean and the range (min-max) over the seeds, against the samples the run has seen.

    .venv/bin/python -m benchmarks.papers macro    # MA-PPO: token, fixed n=5, parse, ppl
    .venv/bin/python -m benchmarks.papers remax    # ReMax: 32 vs 128 samples per iteration
    .venv/bin/python -m benchmarks.papers online   # online ADPO under score noise
    .venv/bin/python -m benchmarks.papers tree     # reward model: sampled trees vs pairs
    .venv/bin/python -m benchmarks.papers remax-warm  # ReMax from a briefly trained actor
    (--only TAG ... runs some of a table's rows)

For `tree`, the figure is `heldout_accuracy` (a fixed set of 256 clean built-in pairs never
trained on) against the labelled comparisons the reward model has been trained on (pairs
of leaves with different scores; both variants offer 24 comparisons per iteration before ties
are dropped).

`reward_mean` is the built-in task's reward (share of digits; maximum 1) of each iteration's
sampled responses; `at N samples` averages it over the 5 iterations that end once N sampled
responses have been trained on (one iteration holds only 32 or 128 responses, so a single
iteration's figure moves by several points).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.algorithms import plan_and_run, with_changes

SEEDS = (1, 2, 3)
WINDOW = 5


def curve(rows, key: str, per_iteration: int, marks: tuple[int, ...]) -> dict[int, float]:
    """The key's mean over the WINDOW iterations ending where `mark` samples have been seen."""
    vals = [r.stat(key) for r in rows]
    out = {}
    for mark in marks:
        end = min(mark // per_iteration, len(vals))
        out[mark] = statistics.mean(vals[max(0, end - WINDOW) : end])
    return out


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} [{min(xs):.3f}-{max(xs):.3f}]"


def table(variants: dict, base: str, key: str, iterations: int, workers: int, only) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for tag, (changes, per_it) in variants.items():
            if only and tag not in only:
                continue
            if per_it is None:  # per iteration: the labelled pairs each run actually had
                table_counted(tag, changes, base, key, iterations, workers, tmp)
                continue
            marks = tuple(per_it * i for i in (iterations // 4, iterations // 2, iterations))
            got: dict[int, list[float]] = {m: [] for m in marks}
            for seed in SEEDS:
                exp = with_changes(base, tmp, f"{tag}-{seed}", seed=seed, **changes)
                _, rows = plan_and_run(exp, workers, iterations, tmp)
                for m, v in curve(rows, key, per_it, marks).items():
                    got[m].append(v)
            cells = "; ".join(f"at {m} samples {spread(v)}" for m, v in got.items())
            print(f"{tag:<22} {key} {cells}", flush=True)


def table_counted(tag, changes, base, key, iterations, workers, tmp) -> None:
    """The key at the iteration's end, the labelled comparisons so far as the x axis."""
    marks = (iterations // 4, iterations // 2, iterations)
    got: dict[int, list[float]] = {m: [] for m in marks}
    seen: dict[int, list[float]] = {m: [] for m in marks}
    for seed in SEEDS:
        exp = with_changes(base, tmp, f"{tag}-{seed}", seed=seed, **changes)
        _, rows = plan_and_run(exp, workers, iterations, tmp)
        pairs = [r.stat("labelled_pairs") for r in rows]
        for m in marks:
            got[m].append(statistics.mean(r.stat(key) for r in rows[max(0, m - WINDOW) : m]))
            seen[m].append(sum(pairs[:m]))
    cells = "; ".join(
        f"after {m} it. ({statistics.mean(seen[m]):.0f} pairs) {spread(got[m])}" for m in marks
    )
    print(f"{tag:<22} {key} {cells}", flush=True)


def remax_warm(iterations: int, workers: int, warm: int) -> None:
    """ReMax (remax-tiny as shipped: 32 prompts, one step per iteration) from an actor that
    GRPO trained for `warm` iterations (its saved weights as actor and reference), against
    ReMax from the random initialisation: the greedy baseline needs a policy whose greedy
    answer resembles its samples."""
    marks = (iterations // 4, iterations // 2, iterations)
    for tag in ("remax from random init", f"remax after {warm} GRPO it."):
        got: dict[int, list[float]] = {m: [] for m in marks}
        start: list[float] = []
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            for seed in SEEDS:
                changes: dict = {"seed": seed}
                if "GRPO" in tag:
                    g = with_changes("grpo-tiny", tmp, f"warm-{seed}", seed=seed)
                    plan_and_run(g, workers, warm, tmp)
                    folder = str(tmp / f"warm-{seed}-run" / "final" / "actor")
                    changes["roles"] = {
                        "actor": {"model": folder, "optimizer": {"lr": 3e-3}},
                        "ref": {"model": folder},
                        "reward": {"model": "tiny"},
                    }
                exp = with_changes("remax-tiny", tmp, f"remax-{seed}", **changes)
                _, rows = plan_and_run(exp, workers, iterations, tmp)
                start.append(rows[0].stat("reward_mean"))
                for m, v in curve(rows, "reward_mean", 32, tuple(32 * x for x in marks)).items():
                    got[m // 32].append(v)
        cells = "; ".join(f"at {32 * m} samples {spread(v)}" for m, v in got.items())
        print(f"{tag:<24} reward_mean first {spread(start)}; {cells}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("macro", "remax", "online", "tree", "remax-warm"))
    ap.add_argument("--warm", type=int, default=10, help="remax-warm: GRPO iterations first")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="row tags to run")
    a = ap.parse_args()
    if a.what == "macro":
        ppo = {"kl_coef": 0.01}
        v = {
            "ppo (token)": ({"ppo": ppo}, 32),
            "ma-ppo fixed n=5": ({"ppo": {**ppo, "macro": {"termination": "fixed", "n": 5}}}, 32),
            "ma-ppo parse clause": (
                {"ppo": {**ppo, "macro": {"termination": "parse", "unit": "clause"}}},
                32,
            ),
            "ma-ppo ppl": ({"ppo": {**ppo, "macro": {"termination": "ppl"}}}, 32),
        }
        table(v, "ppo-tiny", "reward_mean", a.iterations, a.workers, a.only)
    elif a.what == "remax":
        v = {
            "remax 32 x 1 step": ({"batch_size": 32, "mini_batches": 1}, 32),
            "remax 128 x 1 step": ({"batch_size": 128, "mini_batches": 1}, 128),
            "remax 128 x 4 steps": ({"batch_size": 128, "mini_batches": 4}, 128),
        }
        table(v, "remax-tiny", "reward_mean", a.iterations, a.workers, a.only)
    elif a.what == "remax-warm":
        remax_warm(a.iterations, a.workers, a.warm)
    elif a.what == "tree":
        v = {
            "tree 4 prompts x 4 leaves": ({}, None),
            "pairs 24 prompts x 2": ({"batch_size": 24, "tree": {"depths": [0]}}, None),
        }
        table(v, "rm-tree-tiny", "heldout_accuracy", a.iterations, a.workers, a.only)
    else:
        v = {
            f"adpo-online {anchor} noise {n}": ({"label_noise": n, "adpo": {"anchor": anchor}}, 32)
            for anchor in ("policy", "ref")
            for n in (0.0, 0.2, 0.4)
        }
        table(v, "adpo-online-tiny", "reward_mean", a.iterations, a.workers, a.only)


if __name__ == "__main__":
    main()
