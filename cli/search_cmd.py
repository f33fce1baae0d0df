"""`rlhf-plan search` and `rlhf-plan diff`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import err, out, print_json


def _tool_version() -> str:
    try:
        return version("rlhf-plan")
    except PackageNotFoundError:
        return "unknown"


def run_search(
    experiment: str,
    nodes: int,
    gpus_per_node: int,
    device: str,
    profile_path: Path | None,
    any_profile_device: bool,
    method: str,
    time_limit: float,
    seed: int,
    out_path: Path | None,
    as_json: bool,
) -> None:
    from estimator import load_profile
    from estimator.report import estimated_plan
    from planner.search import search
    from plans import PlanError, load_experiment, save_plan
    from plans.devices import profile_mismatch
    from plans.fields import unused_role_notes
    from plans.io import cluster_from_dict

    exp = load_experiment(experiment)
    cluster = cluster_from_dict(
        dict(nodes=nodes, gpus_per_node=gpus_per_node, device=device), source="cluster"
    )
    profile = load_profile(profile_path) if profile_path else None
    mismatch = profile and profile_mismatch(profile.device, cluster.device, str(profile_path))
    if mismatch and not any_profile_device:
        # A CPU profile prices an H100 cluster by CPU timings: the search would optimise for
        # the wrong machine, and every number it prints would look plausible.
        raise PlanError(
            f"{mismatch} (--device); profile that device, drop --profile for the analytic "
            "one, or pass --any-profile-device",
            field="--profile",
        )
    with Progress(
        TextColumn("[bold]searching[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("", total=1.0)

        def progress(frac: float, best: float) -> None:
            bar.update(task, completed=min(frac, 1.0), description=f"best {best:.3f} s/iteration")

        outcome = search(
            exp,
            cluster,
            profile,
            method=method,
            time_limit=time_limit,
            seed=seed,
            progress=progress,
        )
    plan = estimated_plan(
        cluster,
        exp,
        outcome.allocations,
        profile,
        max_staleness=outcome.staleness,
        method=outcome.method,
        seed=seed,
        search_time_s=round(outcome.search_time_s, 3),
        tool_version=_tool_version(),
    )
    path = out_path  # a plan file only where --out says
    if path is not None:
        try:
            save_plan(plan, path)
        except OSError as e:
            raise PlanError(f"cannot write the plan: {e.strerror}", field="--out") from None
    best_base = min(outcome.baselines.values())
    summary = {
        "plan": str(path) if path is not None else None,
        "allocations": {name: alloc.label() for name, alloc in plan.allocations.items()},
        "method": outcome.method,
        "iteration_time_s": outcome.cost,
        "baselines": {k: (v if v != float("inf") else None) for k, v in outcome.baselines.items()},
        "speedup_over_best_baseline": best_base / outcome.cost
        if best_base != float("inf")
        else None,
        "max_staleness": outcome.staleness,
        "allowed_max_staleness": exp.async_.max_staleness,
        "synchronous_iteration_time_s": _finite(outcome.sync_cost),
        "speedup_over_synchronous": _finite(
            outcome.sync_cost / outcome.cost if outcome.sync_cost is not None else None
        ),
        "search_time_s": outcome.search_time_s,
        "steps": outcome.steps,
        "timed_out": outcome.timed_out,
        "profile": plan.estimate.profile if plan.estimate else None,
        "notes": unused_role_notes(exp),
    }
    if as_json:
        print_json(summary)
        return
    table = Table(
        title=f"{exp.name} on {cluster.label()} ({plan.estimate.profile if plan.estimate else ''})"
    )
    for col in ("plan", "s / iteration", "vs searched"):
        table.add_column(col, justify="right" if col != "plan" else "left")
    bound = exp.async_.max_staleness
    written = f" k={outcome.staleness}" if bound else ""
    table.add_row(f"[bold]{outcome.method}[/]{written} (written)", f"{outcome.cost:.3f}", "1.00x")
    if outcome.staleness and outcome.sync_cost is not None:
        ratio = f"{outcome.sync_cost / outcome.cost:.2f}x slower"
        table.add_row(f"{outcome.method} k=0 (synchronous)", f"{outcome.sync_cost:.3f}", ratio)
    for name, cost in sorted(outcome.baselines.items(), key=lambda kv: kv[1]):
        shown = "does not fit" if cost == float("inf") else f"{cost:.3f}"
        ratio = (
            ""
            if cost == float("inf")
            else f"{cost / outcome.cost:.2f}x slower"
            if cost > outcome.cost
            else f"{cost / outcome.cost:.2f}x"
        )
        table.add_row(name, shown, ratio)
    out.print(table)
    for name, alloc in plan.allocations.items():
        out.print(f"  {name:<13} {alloc.label()}", highlight=False)
    line = staleness_summary(bound, outcome.staleness, outcome.cost, outcome.sync_cost)
    if line:
        out.print(line, highlight=False)
    note = " (stopped by the time limit: not reproducible by seed)" if outcome.timed_out else ""
    wrote = f"wrote {path}" if path is not None else "searched (no plan file: --out PATH writes it)"
    out.print(
        f"{wrote} after {outcome.search_time_s:.1f} s, {outcome.steps} steps{note}",
        highlight=False,
    )
    for line in summary["notes"]:
        out.print(f"note: {line}", highlight=False)


def _finite(x: float | None) -> float | None:
    return x if x is not None and x != float("inf") else None


def staleness_summary(bound: int, k: int, cost: float, sync: float | None) -> str:
    """The chosen k against the best synchronous plan, in one line ('' when the experiment
    allows no staleness)."""
    if bound == 0 or sync is None:
        return ""
    if k == 0:
        return (
            f"staleness k=0 (synchronous): no plan with k in 1..{bound} "
            f"(async.max_staleness) beat the synchronous plan's {sync:.3f} s"
        )
    return (
        f"staleness k={k}: {cost:.3f} s/iteration, {sync / cost:.2f}x the synchronous "
        f"plan's {sync:.3f} s (async.max_staleness = {bound})"
    )


def run_diff(a_path: Path, b_path: Path, as_json: bool) -> None:
    from estimator.report import cost_model_for
    from estimator.simulate import simulate_plan
    from planner.diff import diff_plans
    from plans import load_plan

    a, b = load_plan(a_path), load_plan(b_path)

    def times(plan):
        res = simulate_plan(cost_model_for(plan), plan)
        return {**res.call_time_s, "iteration": res.iteration_time_s if res.feasible else None}

    doc = diff_plans(a, b, times(a), times(b))
    if as_json:
        print_json({"a": str(a_path), "b": str(b_path), **doc})
        return
    table = Table(title=f"{a_path} -> {b_path}")
    for col in ("call", "A", "B", "changed", "A s", "B s", "delta s"):
        table.add_column(col)

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    for c in doc["calls"]:
        table.add_row(
            c["call"],
            c["a"] or "-",
            c["b"] or "-",
            ", ".join(c["changes"]) or "same",
            f(c["time_a_s"]),
            f(c["time_b_s"]),
            f(c["delta_s"]),
        )
    table.add_row(
        "[bold]iteration[/]",
        "",
        "",
        "",
        f(doc["iteration_a_s"]),
        f(doc["iteration_b_s"]),
        f(doc["iteration_delta_s"]),
    )
    out.print(table)
    for kind in ("added", "removed"):
        for m in doc[f"reallocations_{kind}"]:
            out.print(f"reallocation {kind}: {m['role']} {m['from']} -> {m['to']}", highlight=False)
    ka, kb = doc["max_staleness_a"], doc["max_staleness_b"]
    if ka != kb:
        out.print(f"staleness: k={ka} -> k={kb}", highlight=False)
    if not doc["same_experiment"] or not doc["same_cluster"]:
        out.print(
            "note: the plans differ in experiment or cluster; times are not directly comparable"
        )
