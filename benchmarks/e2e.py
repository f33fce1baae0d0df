"""End to end: plan PPO for 2 CPU workers, run many plans with rlhf-run, and compare the cost
model's estimates with the measured times.

    .venv/bin/python -m benchmarks.e2e                   # 10 plans x 6 iterations, ~10-15 min
    .venv/bin/python -m benchmarks.e2e --quick           # smoke run: tiny models, ~1 min
    .venv/bin/python -m benchmarks.e2e --analyze runs/e2e-.../results.json   # no running

Plans: the searched one (planner.search with the profile), each baseline of planner.baselines
that fits, and random feasible ones (each call: a random mesh, then a random legal strategy;
kept when the whole plan fits in memory), all distinct. Each plan runs with `rlhf-run` for a few
iterations; iteration 0 (warm-up) is ignored and medians are taken.

The machine is shared, and other jobs only ever add time. Before each run the script waits
for a quiet moment, and while it runs it samples the CPU time of the whole machine and of the
run's own processes (/proc): an iteration during which other jobs used more than
--foreign-max of the machine is not counted, and a plan with fewer than --min-clean counted
iterations is run again (up to --attempts times; then its loaded iterations are used and the
row is marked).

Calibration (--calibrate-on, default: the searched plan): `estimator.calibrate` fits the
per-call-kind factors to that one plan's run, exactly as `rlhf-plan profile --from-run` does;
every plan is then estimated with the base and with the calibrated profile, and errors are
reported for the plans the calibration did not see. With --profile pointing at an already
calibrated profile (e.g. one written by `rlhf-plan profile --from-run` from an earlier run),
use --calibrate-on none: every plan is then held out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.cpu_monitor import Monitor, quiet_wait
from benchmarks.e2e_analysis import (
    Entry,
    analyze,
    clean_rows,
    layout_key,
    load_entries,
    result_folders,
)
from estimator import CostModel, Profile, load_profile, simulate
from estimator.calibrate import spearman
from estimator.report import estimated_plan
from executor.profiling.profiler import machine_name
from planner.candidates import candidates
from planner.context import SearchContext
from planner.search import search
from plans import Allocation, ClusterSpec, ExperimentSpec, Plan, PlanError, save_plan
from plans.io import cluster_from_dict, experiment_from_dict, load_plan
from plans.metrics import FILE, read_metrics

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "estimator" / "profiles"


def default_profile() -> Path:
    """The newest shipped profile with 2-worker collectives measured on a CPU of this model;
    the Xeon one where none was (run_one then says that the machines differ)."""
    here = machine_name("cpu")
    found = []
    for path in PROFILES.glob("cpu-*_2workers.json"):
        p = load_profile(path)
        if p.device_name == here and p.calibration is None:
            found.append((p.created or "", path))
    return max(found)[1] if found else PROFILES / "cpu-xeon-2core-1thread_2workers.json"


# Model sizes of the check (byte vocabulary of the built-in tokenizer). "85m" is preset
# `small`; the two smaller ones are shapes of their own, so a profile that only measured
# `tiny` and `small` must price them from other shapes.
SIZES: dict[str, dict] = {
    "1m": {"name": "e2e-1m", "hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 6,
           "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 264,
           "max_position_embeddings": 512},
    "25m": {"name": "e2e-25m", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
            "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 264,
            "max_position_embeddings": 512},
    "85m": "small",
}  # fmt: skip


def experiment(quick: bool, rule_reward: bool, size: str = "85m", algorithm: str = "ppo"):
    """PPO (four models) or GRPO (actor, reference, reward) at one of SIZES, or tiny models
    for --quick. PPO: 8 prompts x (16 + 16) tokens, 2 mini-batches; GRPO: 2 prompts x 4
    samples x (16 + 64) tokens, as the two usual shapes (short answers, long answers)."""
    model = "tiny" if quick else SIZES[size]
    opt = {"lr": 1e-5}
    doc: dict = {
        "name": f"{algorithm}-e2e-{'tiny' if quick else size}",
        "algorithm": algorithm,
        "prompt_len": 16,
        "dtype": "float32",
        "seed": 1,
    }
    if algorithm == "ppo":
        doc.update(batch_size=8, gen_len=16, ppo_epochs=1, mini_batches=2)
        doc["roles"] = {
            "actor": {"model": model, "optimizer": opt},
            "critic": {"model": model, "optimizer": opt},
            "ref": {"model": model},
            "reward": {"model": model},
        }
    elif algorithm == "grpo":
        doc.update(batch_size=2, group_size=4, gen_len=64)
        doc["roles"] = {
            "actor": {"model": model, "optimizer": opt},
            "ref": {"model": model},
            "reward": {"model": model},
        }
    else:
        raise SystemExit(f"--algorithm: {algorithm!r} is not ppo or grpo")
    if rule_reward:
        doc["reward_function"] = "builtin:digits"
    return experiment_from_dict(doc)


# ---- plans ---------------------------------------------------------------------------------
def make_plans(
    exp: ExperimentSpec,
    cluster: ClusterSpec,
    profile: Profile,
    n_random: int,
    seed: int,
    time_limit: float,
) -> tuple[list[Entry], list[str]]:
    """The searched plan, the baselines that fit, then distinct random feasible plans."""
    entries: list[Entry] = []
    notes: list[str] = []
    seen: dict[tuple, str] = {}

    def add(label: str, method: str, allocs: dict[str, Allocation]) -> None:
        k = layout_key(allocs)
        if k in seen:
            notes.append(f"{label} is the same plan as {seen[k]}")
            return
        seen[k] = label
        entries.append(Entry(label, method, allocs))

    out = search(exp, cluster, profile, method="mcmc", time_limit=time_limit, seed=seed)
    add("searched", "mcmc", out.allocations)
    for name in ("symmetric", "separated", "megatron"):
        try:
            b = search(exp, cluster, profile, method=name)
        except PlanError as e:
            notes.append(f"{name}: no plan ({e.reason})")
            continue
        add(name, name, b.allocations)
    cm = CostModel(cluster, exp, profile)
    ctx = SearchContext(exp, cluster, cm)
    # Candidates in a fixed order (by label, not by cost), so the random plans are the same
    # whatever profile priced them.
    cands = {
        name: sorted(cs, key=lambda c: c.alloc.label())
        for name, cs in candidates(ctx, prune=False).items()
    }
    rng = random.Random(seed)
    tries = 0
    count = 0
    while count < n_random and tries < 5000:
        tries += 1
        allocs = {}
        for name, cs in cands.items():
            meshes = sorted({c.alloc.mesh.label() for c in cs})
            mesh = rng.choice(meshes)
            allocs[name] = rng.choice([c.alloc for c in cs if c.alloc.mesh.label() == mesh])
        t, _ = simulate_cost(cm, allocs)
        if not math.isfinite(t) or layout_key(allocs) in seen:
            continue
        count += 1
        add(f"random-{count}", "manual", allocs)
    return entries, notes


def simulate_cost(cm: CostModel, allocs: dict[str, Allocation]) -> tuple[float, object]:
    res = simulate(cm, allocs)
    return (res.iteration_time_s if res.feasible else math.inf), res


def write_plan(entry: Entry, exp, cluster, profile: Profile, path: Path, seed: int) -> Plan:
    plan = estimated_plan(cluster, exp, entry.allocations, profile, method=entry.method, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(plan, path)
    return plan


# ---- running -------------------------------------------------------------------------------
def run_plan(plan_path: Path, run_dir: Path, iterations: int) -> dict:
    """One rlhf-run of a plan, monitored; returns {"dir", "rows", "shares", "wall_s"}."""
    exe = Path(sys.executable).parent / "rlhf-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(plan_path.read_text())  # for --from-run
    cmd = [str(exe), str(plan_path), "--iterations", str(iterations), "--out", str(run_dir),
           "--checkpoint-every", "0"]  # fmt: skip
    t0 = time.monotonic()
    with open(run_dir / "stderr.txt", "w") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
        mon = Monitor(proc.pid, run_dir / FILE)
        mon.start()
        code = proc.wait()
        mon.stop()
    if code != 0:
        tail = (run_dir / "stderr.txt").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"rlhf-run {plan_path} failed ({code}): {' | '.join(tail)}")
    rows = read_metrics(run_dir / FILE)
    shares = mon.shares([r.iteration_s for r in rows])
    samples = {"t": mon.t, "busy": mon.busy, "mine": mon.mine, "lines": mon.line_times}
    (run_dir / "cpu_samples.json").write_text(json.dumps(samples))
    rows_doc = [json.loads(r.to_line()) for r in rows]  # results.json keeps them as JSON
    return {
        "dir": str(run_dir),
        "rows": rows_doc,
        "shares": shares,
        "wall_s": time.monotonic() - t0,
    }


def measure(entries, plans_dir, args) -> None:
    """Every plan once per round, rounds one after the other: a drift of the machine's speed
    then moves every plan alike, and two rounds say how well the runs repeat."""
    for rnd in range(args.rounds):
        for i, e in enumerate(entries):
            plan_path = plans_dir / e.label / "plan.json"
            for attempt in range(args.attempts):
                waited = quiet_wait(args.foreign_max, args.quiet_timeout) if args.gate else 0.0
                name = f"run-{attempt}" if args.rounds == 1 else f"round-{rnd}-run-{attempt}"
                run = run_plan(plan_path, plans_dir / e.label / name, args.iterations)
                run["waited_s"] = waited
                run["round"] = rnd
                e.runs.append(run)
                good, clean = clean_rows(e, args.foreign_max, rounds=(rnd,))
                n_clean = len(good) if clean else 0
                print(
                    f"[{i + 1}/{len(entries)}] {e.label:<10} round {rnd + 1}/{args.rounds} "
                    f"attempt {attempt + 1}: median "
                    f"{statistics.median(r['iteration_s'] for r in run['rows'][1:]):.2f} s, "
                    f"{n_clean} clean iteration(s) this round, wall {run['wall_s']:.0f} s"
                    + ("" if waited is not None else ", no quiet moment came"),
                    file=sys.stderr,
                    flush=True,
                )
                if n_clean >= args.min_clean:
                    break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=None,
                    help="profile that plans and prices (default: the newest shipped 2-worker "
                         "profile of this CPU model); with --analyze, the one the run used")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="folder for plans, runs, results")
    ap.add_argument("--iterations", type=int, default=None, help="per run (default 6; quick 3)")
    ap.add_argument("--random", type=int, default=None, help="random plans (default 6; quick 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=20.0, help="search seconds")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny models, 3 plans")
    ap.add_argument("--devices", type=int, default=2,
                    help="CPU workers of the cluster (1: the calls alone, nothing shares a core)")  # fmt: skip
    ap.add_argument("--rule-reward", action="store_true", help="builtin:digits rule reward")
    ap.add_argument("--size", choices=sorted(SIZES), default="85m", help="model size")
    ap.add_argument("--algorithm", choices=("ppo", "grpo"), default="ppo")
    ap.add_argument("--matrix", action="store_true",
                    help="every size x both algorithms, one folder each, then a joint summary")  # fmt: skip
    ap.add_argument("--calibrate-on", default="searched",
                    help="plan label(s), comma-separated, or none")  # fmt: skip
    ap.add_argument("--foreign-max", type=float, default=0.05,
                    help="an iteration counts when other jobs used at most this share of the CPUs")  # fmt: skip
    ap.add_argument("--min-clean", type=int, default=3, help="per plan and round")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every plan this many times, in rounds over all plans; with 2 or "
                         "more the tables also say how well the rounds agree")  # fmt: skip
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--quiet-timeout", type=float, default=90.0)
    ap.add_argument("--no-gate", dest="gate", action="store_false", help="do not wait for quiet")
    ap.add_argument("--analyze", type=Path, default=None,
                    help="results.json of an earlier run, or a --matrix folder; with --profile, "
                         "re-estimate the same measurements with that profile")  # fmt: skip
    args = ap.parse_args()
    if args.analyze:
        summaries = {}
        for folder in result_folders(args.analyze):
            entries, doc = load_entries(folder)
            for k in ("foreign_max", "calibrate_on"):
                if getattr(args, k) == ap.get_default(k):
                    setattr(args, k, doc["args"][k])
            base = load_profile(args.profile or doc["profile"])
            plans = {e.label: load_plan(folder / e.label / "plan.json") for e in entries}
            key = (doc["args"].get("algorithm", "ppo"), doc["args"].get("size", "85m"))
            summaries[key] = analyze(entries, plans, base, args, folder)
        if len(summaries) > 1:
            print_matrix(summaries)
        return
    args.profile = args.profile or default_profile()
    print(f"profile: {args.profile}", file=sys.stderr)
    args.iterations = args.iterations or (3 if args.quick else 6)
    args.random = args.random if args.random is not None else (2 if args.quick else 6)
    if args.quick:
        args.gate, args.min_clean, args.attempts = False, 0, 1
        args.foreign_max = max(args.foreign_max, 1.0)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or ROOT / "runs" / f"e2e-{stamp}"
    if not args.matrix:
        run_one(args, args.size, args.algorithm, out_dir)
        return
    summaries = {}
    for algorithm in ("ppo", "grpo"):
        for size in SIZES:
            summaries[(algorithm, size)] = run_one(
                args, size, algorithm, out_dir / f"{algorithm}-{size}"
            )
    print_matrix(summaries)


def print_matrix(summaries: dict) -> None:
    """One line per experiment, then the per-call error over every call of every plan; with
    two rounds, how well the rounds agree with each other next to it."""
    print("\nmatrix (base profile, every plan)")
    errors = []
    for (algorithm, size), summ in summaries.items():
        s = summ[("all plans", "base")]
        errors += s["errors"]
        rep = summ.get("repeatability")
        again = (f"; rounds agree: Spearman {rep['spearman']:.3f}, calls {rep['calls']:.1%}"
                 if rep else "")  # fmt: skip
        print(f"  {algorithm:<5}{size:>4}: {s['n']} plans, Spearman {s['spearman']:.3f}, "
              f"iteration {s['iteration_error']:.1%}, calls {s['all_calls']:.1%}{again}")  # fmt: skip
    rhos = [summ[("all plans", "base")]["spearman"] for summ in summaries.values()]
    pooled = [p for summ in summaries.values() for p in summ[("all plans", "base")]["iterations"]]
    print(
        f"  Spearman: lowest {min(rhos):.3f}, median {statistics.median(rhos):.3f} (all "
        f"{len(pooled)} plans pooled: {spearman(*zip(*pooled, strict=True)):.3f}, which the "
        f"sizes' differences dominate); per-call |error| over all {len(errors)} calls: median "
        f"{statistics.median(errors):.1%}"
    )


def run_one(args, size: str, algorithm: str, out_dir: Path) -> dict:
    """Plan, run and analyze one experiment; returns analyze()'s summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_profile(args.profile)
    here = machine_name("cpu")
    if base.device_name and base.device_name != here:
        print(f"note: {args.profile} was measured on {base.device_name!r}, this is {here!r}: "
              "estimates will be off by the machines' difference (rlhf-plan profile --check)",
              file=sys.stderr)  # fmt: skip
    exp = experiment(args.quick, args.rule_reward, size, algorithm)
    cluster = cluster_from_dict({"nodes": 1, "gpus_per_node": args.devices, "device": "cpu"})
    t0 = time.monotonic()
    entries, notes = make_plans(exp, cluster, base, args.random, args.seed, args.time_limit)
    plans = {}
    for e in entries:
        plans[e.label] = write_plan(
            e, exp, cluster, base, out_dir / e.label / "plan.json", args.seed
        )
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"{len(entries)} plans in {time.monotonic() - t0:.0f} s; load {os.getloadavg()}",
          file=sys.stderr)  # fmt: skip
    measure(entries, out_dir, args)
    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "profile": str(Path(args.profile).resolve()),
        "args": {
            "foreign_max": args.foreign_max,
            "calibrate_on": args.calibrate_on,
            "size": size,
            "algorithm": algorithm,
            "rounds": args.rounds,
        },
        "notes": notes,
        "entries": [{"label": e.label, "method": e.method, "runs": e.runs} for e in entries],
    }
    (out_dir / "results.json").write_text(json.dumps(doc))
    print(f"results in {out_dir}/results.json; {time.monotonic() - t0:.0f} s in all; load "
          f"average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    return analyze(entries, plans, base, args, out_dir)


if __name__ == "__main__":
    main()
