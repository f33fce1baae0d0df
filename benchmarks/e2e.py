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
import bisect
import datetime as dt
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from estimator import CostModel, Profile, estimate_plan, load_profile, save_profile, simulate
from estimator.calibrate import RunData, calibrate, relative_error, spearman
from planner.candidates import candidates
from planner.context import SearchContext
from planner.search import search
from plans import Allocation, ClusterSpec, ExperimentSpec, Plan, PlanError, Provenance, save_plan
from plans.io import cluster_from_dict, experiment_from_dict, load_plan

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "estimator" / "profiles" / "cpu-epyc-2core-1thread_2workers.json"
CALLS = ("actor_gen", "ref_inf", "rew_inf", "critic_inf", "actor_train", "critic_train")


def experiment(quick: bool, rule_reward: bool) -> ExperimentSpec:
    """PPO with four 85M-parameter models (preset `small`), or tiny ones for --quick."""
    model = "tiny" if quick else "small"
    doc = {
        "name": "ppo-e2e-tiny" if quick else "ppo-e2e-small",
        "algorithm": "ppo",
        "batch_size": 8,
        "prompt_len": 16,
        "gen_len": 16,
        "ppo_epochs": 1,
        "mini_batches": 2,
        "dtype": "float32",
        "seed": 1,
        "roles": {
            "actor": {"model": model, "optimizer": {"lr": 1e-5}},
            "critic": {"model": model, "optimizer": {"lr": 1e-5}},
            "ref": {"model": model},
            "reward": {"model": model},
        },
    }
    if rule_reward:
        doc["reward_function"] = "builtin:digits"
    return experiment_from_dict(doc)


# ---- plans ---------------------------------------------------------------------------------
@dataclass
class Entry:
    label: str
    method: str
    allocations: dict[str, Allocation]
    runs: list[dict] = field(default_factory=list)  # {"dir", "rows", "shares", "waited_s"}


def _key(allocs: dict[str, Allocation]) -> tuple:
    return tuple(allocs[c].label() for c in sorted(allocs))


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
        k = _key(allocs)
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
        if not math.isfinite(t) or _key(allocs) in seen:
            continue
        count += 1
        add(f"random-{count}", "manual", allocs)
    return entries, notes


def simulate_cost(cm: CostModel, allocs: dict[str, Allocation]) -> tuple[float, object]:
    res = simulate(cm, allocs)
    return (res.iteration_time_s if res.feasible else math.inf), res


def write_plan(entry: Entry, exp, cluster, profile: Profile, path: Path, seed: int) -> Plan:
    plan = Plan(
        cluster=cluster,
        experiment=exp,
        allocations=entry.allocations,
        provenance=Provenance(
            method=entry.method,
            seed=seed,
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        ),
    )
    plan = plan.model_copy(update={"estimate": estimate_plan(plan, profile)})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(plan, path)
    return plan


# ---- who used the CPUs ---------------------------------------------------------------------
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def machine_busy_s() -> float:
    """CPU seconds the whole machine's processes have run since boot (all cores): user, nice
    and system time, plus steal (another virtual machine had our core). Interrupt time is
    left out: it is accounted to no process, and most of it here is the loopback traffic of
    our own gloo workers."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system = v[0], v[1], v[2]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + steal) / HZ


def tree_cpu_s(root: int, seen: dict[int, float] | None = None) -> float:
    """CPU seconds of process `root`, its descendants, and this process. `seen` keeps the
    last figure of every process found so far, so one that exits still counts."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(name)] = int(rest[1])
        cpu[int(name)] = (int(rest[11]) + int(rest[12])) / HZ
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    mine, todo = {root, os.getpid()}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in mine:
                mine.add(c)
                todo.append(c)
    seen = {} if seen is None else seen
    for p in mine:
        if p in cpu:
            seen[p] = cpu[p]
    return sum(seen.values())


def quiet_wait(threshold: float, timeout: float, calm_needed: int = 3) -> float | None:
    """Wait until other jobs used less than `threshold` of the machine for `calm_needed`
    consecutive seconds; the seconds waited, or None after `timeout`."""
    t0 = time.monotonic()
    calm = 0
    while time.monotonic() - t0 < timeout:
        b0, w0 = machine_busy_s(), time.monotonic()
        time.sleep(1.0)
        share = (machine_busy_s() - b0) / (NCPU * (time.monotonic() - w0))
        calm = calm + 1 if share < threshold else 0
        if calm >= calm_needed:
            return time.monotonic() - t0
    return None


class Monitor(threading.Thread):
    """Samples the machine's and a process tree's CPU time, and when lines of a metrics file
    appear, so each logged iteration gets the share other jobs took of its own window."""

    def __init__(self, root: int, metrics: Path, period: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.metrics, self.period = root, metrics, period
        self.t: list[float] = []
        self.busy: list[float] = []
        self.mine: list[float] = []
        self.line_times: list[float] = []
        self._seen: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.period)

    def _sample(self) -> None:
        now = time.monotonic()
        busy, mine = machine_busy_s(), tree_cpu_s(self.root, self._seen)
        try:
            lines = self.metrics.read_bytes().count(b"\n")
        except OSError:
            lines = 0
        self.t.append(now)
        self.busy.append(busy)
        self.mine.append(mine)
        while len(self.line_times) < lines:
            self.line_times.append(now)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _at(self, series: list[float], t: float) -> float:
        i = bisect.bisect_left(self.t, t)
        if i <= 0:
            return series[0]
        if i >= len(self.t):
            return series[-1]
        t0, t1 = self.t[i - 1], self.t[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return series[i - 1] + f * (series[i] - series[i - 1])

    def foreign_share(self, start: float, end: float) -> float:
        if end <= start or len(self.t) < 2:
            return math.nan
        busy = self._at(self.busy, end) - self._at(self.busy, start)
        mine = self._at(self.mine, end) - self._at(self.mine, start)
        return max(0.0, busy - mine) / (NCPU * (end - start))

    def shares(self, durations: list[float]) -> list[float]:
        """Foreign share of each logged iteration (line k ended iteration k)."""
        return [
            self.foreign_share(self.line_times[k] - d, self.line_times[k])
            if k < len(self.line_times)
            else math.nan
            for k, d in enumerate(durations)
        ]


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
        mon = Monitor(proc.pid, run_dir / "metrics.jsonl")
        mon.start()
        code = proc.wait()
        mon.stop()
    if code != 0:
        tail = (run_dir / "stderr.txt").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"rlhf-run {plan_path} failed ({code}): {' | '.join(tail)}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    shares = mon.shares([r["iteration_s"] for r in rows])
    samples = {"t": mon.t, "busy": mon.busy, "mine": mon.mine, "lines": mon.line_times}
    (run_dir / "cpu_samples.json").write_text(json.dumps(samples))
    return {"dir": str(run_dir), "rows": rows, "shares": shares, "wall_s": time.monotonic() - t0}


def clean_rows(entry: Entry, foreign_max: float, skip: int = 1) -> tuple[list[dict], bool]:
    """Iterations (after the warm-up) of all runs of a plan that other jobs did not disturb;
    when there are none, every iteration after the warm-up, flagged."""
    rows, loaded = [], []
    for run in entry.runs:
        for r, share in zip(run["rows"], run["shares"], strict=True):
            if r["iteration"] < skip:
                continue
            (rows if share <= foreign_max else loaded).append(r)
    return (rows, True) if rows else (loaded, False)


def measure(entries, plans_dir, args) -> None:
    for i, e in enumerate(entries):
        plan_path = plans_dir / e.label / "plan.json"
        for attempt in range(args.attempts):
            waited = quiet_wait(args.foreign_max, args.quiet_timeout) if args.gate else 0.0
            run = run_plan(plan_path, plans_dir / e.label / f"run-{attempt}", args.iterations)
            run["waited_s"] = waited
            e.runs.append(run)
            good, clean = clean_rows(e, args.foreign_max)
            n_clean = len(good) if clean else 0
            print(
                f"[{i + 1}/{len(entries)}] {e.label:<10} attempt {attempt + 1}: "
                f"median {statistics.median(r['iteration_s'] for r in run['rows'][1:]):.2f} s, "
                f"{n_clean} clean iteration(s) so far, wall {run['wall_s']:.0f} s"
                + ("" if waited is not None else ", no quiet moment came"),
                file=sys.stderr,
                flush=True,
            )
            if n_clean >= args.min_clean:
                break


# ---- analysis ------------------------------------------------------------------------------
def estimates(plan: Plan, profile: Profile) -> tuple[float, dict[str, float]]:
    cm = CostModel(plan.cluster, plan.experiment, profile)
    res = simulate(cm, plan.allocations)
    return res.iteration_time_s, dict(res.call_time_s)


def _fmt_err(e: float) -> str:
    return f"{e:+.0%}" if math.isfinite(e) else "-"


def analyze(entries: list[Entry], plans: dict[str, Plan], base: Profile, args, out_dir: Path):
    """Print the tables; returns the summary figures."""
    measured: dict[str, dict] = {}
    for e in entries:
        rows, clean = clean_rows(e, args.foreign_max)
        shares = [s for run in e.runs for r, s in zip(run["rows"], run["shares"], strict=True)
                  if r["iteration"] >= 1]  # fmt: skip
        measured[e.label] = {
            "iteration": statistics.median(r["iteration_s"] for r in rows),
            "calls": {
                c: statistics.median(r["calls"][c]["compute_s"] for r in rows)
                for c in CALLS
                if all(c in r["calls"] for r in rows)
            },
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
    print(f"{'plan':<11}" + "".join(f"{c:>19}" for c in CALLS))
    for e in entries:
        m = measured[e.label]["calls"]
        cells = []
        for c in CALLS:
            eb = est["base"][e.label][1][c]
            txt = f"{eb:.2f} {m[c]:.2f} {_fmt_err(relative_error(eb, m[c])):>4}" if c in m else "-"
            cells.append(f"{txt:>19}")
        print(f"{e.label:<11}" + "".join(cells))
    if cal_label:
        print("\nper call, calibrated profile: estimated s, error")
        print(f"{'plan':<11}" + "".join(f"{c:>14}" for c in CALLS))
        for e in entries:
            m = measured[e.label]["calls"]
            cells = []
            for c in CALLS:
                ef = est[final][e.label][1][c]
                txt = f"{ef:.2f} {_fmt_err(relative_error(ef, m[c])):>4}" if c in m else "-"
                cells.append(f"{txt:>14}")
            print(f"{e.label:<11}" + "".join(cells))
    print("\nplans (mesh, dp/tp/pp, micro-batches, +z1: ZeRO-1):")
    for e in entries:
        print(f"  {e.label:<10} " + ", ".join(
            f"{c} {plans[e.label].allocations[c].label()}" for c in CALLS))  # fmt: skip

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
                for c in CALLS
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
                "n": len(labels),
            }
    print("\nsummary (median |relative error|)")
    for (kind, pname), s in summary.items():
        calls = ", ".join(f"{c} {v:.0%}" for c, v in s["per_call"].items())
        print(f"  {kind} ({s['n']}), {pname} profile: Spearman {s['spearman']:.3f}; iteration "
              f"{s['iteration_error']:.1%}; calls {s['all_calls']:.1%} ({calls})")  # fmt: skip
    fastest = min(entries, key=lambda e: measured[e.label]["iteration"])
    sm, fm = measured["searched"]["iteration"], measured[fastest.label]["iteration"]
    print(f"searched plan: {sm:.2f} s measured; fastest measured: {fastest.label} {fm:.2f} s "
          f"(searched is {sm / fm - 1:+.1%})")  # fmt: skip
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=PROFILE)
    ap.add_argument("--out", type=Path, default=None, help="folder for plans, runs, results")
    ap.add_argument("--iterations", type=int, default=None, help="per run (default 6; quick 3)")
    ap.add_argument("--random", type=int, default=None, help="random plans (default 6; quick 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=20.0, help="search seconds")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny models, 3 plans")
    ap.add_argument("--rule-reward", action="store_true", help="builtin:digits rule reward")
    ap.add_argument("--calibrate-on", default="searched",
                    help="plan label(s), comma-separated, or none")  # fmt: skip
    ap.add_argument("--foreign-max", type=float, default=0.05,
                    help="an iteration counts when other jobs used at most this share of the CPUs")  # fmt: skip
    ap.add_argument("--min-clean", type=int, default=3)
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--quiet-timeout", type=float, default=90.0)
    ap.add_argument("--no-gate", dest="gate", action="store_false", help="do not wait for quiet")
    ap.add_argument("--analyze", type=Path, default=None, help="results.json of an earlier run")
    args = ap.parse_args()
    if args.analyze:
        doc = json.loads(args.analyze.read_text())
        out_dir = args.analyze.parent
        for k in ("foreign_max", "calibrate_on"):
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, doc["args"][k])
        base = load_profile(doc["profile"])
        entries = [Entry(e["label"], e["method"], {}, e["runs"]) for e in doc["entries"]]
        plans = {e.label: load_plan(out_dir / e.label / "plan.json") for e in entries}
        analyze(entries, plans, base, args, out_dir)
        return
    args.iterations = args.iterations or (3 if args.quick else 6)
    args.random = args.random if args.random is not None else (2 if args.quick else 6)
    if args.quick:
        args.gate, args.min_clean, args.attempts = False, 0, 1
        args.foreign_max = max(args.foreign_max, 1.0)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or ROOT / "runs" / f"e2e-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_profile(args.profile)
    exp = experiment(args.quick, args.rule_reward)
    cluster = cluster_from_dict({"nodes": 1, "gpus_per_node": 2, "device": "cpu"})
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
        "args": {"foreign_max": args.foreign_max, "calibrate_on": args.calibrate_on},
        "notes": notes,
        "entries": [{"label": e.label, "method": e.method, "runs": e.runs} for e in entries],
    }
    (out_dir / "results.json").write_text(json.dumps(doc))
    print(f"results in {out_dir}/results.json; {time.monotonic() - t0:.0f} s in all; load "
          f"average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    for n in notes:
        print(f"note: {n}")
    analyze(entries, plans, base, args, out_dir)


if __name__ == "__main__":
    main()
