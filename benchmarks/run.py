"""rlhf-run on the demo: iteration time, tokens/s, and per-call measured versus estimated time.

    .venv/bin/python -m benchmarks.run                       # plan ppo-tiny for 4 CPU workers, run 20 iterations
    .venv/bin/python -m benchmarks.run --workers 2 --iterations 30

The plan is searched with the measured CPU profile shipped in estimator/profiles (one thread
per worker). With more workers than cores the workers share cores, so measured times exceed
the estimate by about workers / cores; the table shows both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from plans.metrics import FILE, read_metrics

PROFILE = next(
    iter(sorted((Path(__file__).parents[1] / "estimator" / "profiles").glob("cpu-*.json"))), None
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="ppo-tiny")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument(
        "--plan", type=Path, default=None, help="run this plan instead of searching one"
    )
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        plan = args.plan or Path(tmp) / "plan.json"
        if args.plan is None:
            cmd = [
                str(bin_dir / "rlhf-plan"),
                "search",
                args.experiment,
                "--nodes",
                "1",
                "--gpus-per-node",
                str(args.workers),
                "--device",
                "cpu",
                "--out",
                str(plan),
                "--json",
            ]
            if PROFILE:
                cmd += ["--profile", str(PROFILE)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        run_dir = Path(tmp) / "run"
        subprocess.run(
            [
                str(bin_dir / "rlhf-run"),
                str(plan),
                "--iterations",
                str(args.iterations),
                "--out",
                str(run_dir),
                "--checkpoint-every",
                "0",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        rows = read_metrics(run_dir / FILE)
        doc = json.loads(plan.read_text())
    steady = rows[1:] if len(rows) > 1 else rows  # the first iteration builds groups and plans
    exp = doc["experiment"]
    it_s = statistics.median(r.iteration_s for r in steady)
    tokens = statistics.median(r.stat("response_len") for r in steady) * exp["batch_size"]
    est = (doc.get("estimate") or {}).get("iteration_time_s")
    print(
        f"plan: {args.plan or args.experiment} on {args.workers} CPU workers; profile: "
        f"{(doc.get('estimate') or {}).get('profile', 'none')}"
    )
    print(
        f"iteration: median {it_s:.3f} s (estimate {est if est is None else f'{est:.3f}'} s); "
        f"generated tokens/s {tokens / it_s:.0f}; trained tokens/s {tokens * exp['ppo_epochs'] * 2 / it_s:.0f}"
    )
    print("call           measured s  estimate s  ratio   realloc s")
    for name in steady[0].calls:
        m = statistics.median(r.calls[name].compute_s for r in steady)
        r_s = statistics.median(r.calls[name].realloc_s for r in steady)
        e = steady[0].calls[name].estimate_s
        ratio = f"{m / e:5.2f}" if e else "    -"
        print(f"{name:<14} {m:10.3f}  {e if e is None else f'{e:10.3f}'}  {ratio}  {r_s:9.3f}")
    print(
        f"reward: {rows[0].stat('reward_mean'):.3f} -> {rows[-1].stat('reward_mean'):.3f} over {len(rows)} iterations"
    )


if __name__ == "__main__":
    main()
