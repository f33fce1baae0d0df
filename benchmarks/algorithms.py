"""Each algorithm planned with `rlhf-plan search` and run with `rlhf-run` on CPU workers, and
what it learned.

    .venv/bin/python -m benchmarks.algorithms                    # every algorithm, 40 iterations
    .venv/bin/python -m benchmarks.algorithms --only grpo-tiny --iterations 60
    .venv/bin/python -m benchmarks.algorithms --preference --noise 0 0.2 0.4 --iterations 60

RL algorithms report the mean reward on the built-in task (share of digits in the response;
maximum 1) at the first iteration and at the end (mean of the last 10 iterations), and the
share of the gap to the maximum that was closed. Preference algorithms report
`true_accuracy`: on each iteration's fresh pairs, before any step has seen them, the share
whose truly better response (by the task's rule, whatever the possibly swapped label says)
the model ranks strictly higher by its implicit reward against the reference; a held-out
figure. At iteration 0 the policy equals the reference, so pairs tie and count as wrong: the
first figure sits below chance (0.5). rm-tree reports `heldout_accuracy` on a fixed set of
clean built-in pairs never trained on. `--preference` compares DPO and anchored DPO on the same
noisy pairs. Each run also says which models its plan reallocates (used in two layouts).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from plans import plan_from_dict
from plans.metrics import FILE, MetricsRow, read_metrics
from plans.residency import layout_key

ROOT = Path(__file__).parents[1]
PROFILE = ROOT / "estimator" / "profiles" / "cpu-epyc-2core-1thread.json"
RL = ("ppo-tiny", "grpo-tiny", "remax-tiny", "adpo-online-tiny")
PREFERENCE = ("dpo-tiny", "adpo-tiny", "rm-tiny", "rm-tree-tiny")


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def plan_and_run(experiment: str, workers: int, iterations: int, tmp: Path) -> tuple[dict, list]:
    plan = tmp / f"{Path(experiment).stem}.json"
    subprocess.run(
        [_bin("rlhf-plan"), "search", experiment, "--nodes", "1", "--gpus-per-node", str(workers),
         "--device", "cpu", "--seed", "0", "--profile", str(PROFILE), "--out", str(plan), "--json"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    run_dir = tmp / f"{Path(experiment).stem}-run"
    subprocess.run(
        [_bin("rlhf-run"), str(plan), "--iterations", str(iterations), "--out", str(run_dir)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return json.loads(plan.read_text()), read_metrics(run_dir / FILE)


def moves(plan: dict) -> str:
    """Models the plan uses in more than one layout (so they are reallocated every iteration)."""
    p = plan_from_dict(plan)
    by_role: dict[str, set] = {}
    for m in p.experiment.mfcs():
        by_role.setdefault(m.role, set()).add(layout_key(p.allocations[m.name]))
    return ", ".join(r for r, layouts in by_role.items() if len(layouts) > 1) or "none"


LAST = 10


def headline(rows: list[MetricsRow]) -> str:
    """First iteration -> mean of the last LAST iterations (each iteration's pairs or rollouts
    are only 32, so one iteration's figure moves by several points)."""
    keys = ("reward_mean", "true_accuracy", "heldout_accuracy")
    key = next(k for k in keys if rows[0].stat(k) is not None)
    vals = [r.stat(key) for r in rows]
    start, end = vals[0], statistics.mean(vals[-LAST:])
    text = f"{key} {start:.3f} -> {end:.3f}"
    if key == "reward_mean":
        text += f" (closes {(end - start) / (1.0 - start):.0%} of the gap to 1.0)"
    return text


def with_changes(name: str, tmp: Path, tag: str, **changes) -> str:
    """A copy of a built-in experiment with top-level fields or [sections] changed."""
    from plans import example_path

    doc = tomllib.loads(example_path(name, "experiment").read_text())
    for k, v in changes.items():
        if isinstance(v, dict):
            doc.setdefault(k, {}).update(v)
        else:
            doc[k] = v
    path = tmp / f"{tag}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="experiment names (default: all)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--preference", action="store_true", help="DPO vs ADPO at each --noise")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.2, 0.4])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if args.preference:
            print(
                f"noise  algorithm  true_accuracy first -> mean of last 10 (workers {args.workers}, {args.iterations} iterations)"
            )
            for noise in args.noise:
                for name in ("dpo-tiny", "adpo-tiny"):
                    exp = with_changes(name, tmp, f"{name}-{noise}", label_noise=noise)
                    _, rows = plan_and_run(exp, args.workers, args.iterations, tmp)
                    print(f"{noise:<6} {name:<10} {headline(rows)}", flush=True)
            return
        for name in args.only or (*RL, *PREFERENCE):
            t0 = time.perf_counter()
            plan, rows = plan_and_run(name, args.workers, args.iterations, tmp)
            wall = time.perf_counter() - t0
            print(
                f"{name:<11} {headline(rows)}; reallocated: {moves(plan)}; "
                f"{len(rows)} iterations in {wall:.0f} s (plan + run)",
                flush=True,
            )


if __name__ == "__main__":
    main()
