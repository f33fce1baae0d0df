"""`rlhf-plan`: profile devices, search placements, inspect and compare plans."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli.common import EXIT_CODES_PLAN, err, out, print_json, run_app

app = typer.Typer(
    name="rlhf-plan",
    help="Plan RLHF training: profile the devices, search the fastest placement of every model call, "
    "and inspect, estimate and compare plans.",
    epilog=EXIT_CODES_PLAN,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Plan RLHF training on a GPU cluster."""


class Method(StrEnum):
    mcmc = "mcmc"
    exhaustive = "exhaustive"
    symmetric = "symmetric"
    separated = "separated"
    megatron = "megatron"


class SchemaKind(StrEnum):
    plan = "plan"
    experiment = "experiment"
    cluster = "cluster"
    profile = "profile"


class DocKind(StrEnum):
    auto = "auto"
    plan = "plan"
    experiment = "experiment"


@app.command()
def profile(
    device: Annotated[
        str,
        typer.Option(
            help="A device table name (h100, h200, a100, ..., cpu; it must be this machine's "
            "device, and the profile records it), or cuda for any GPU; default: cuda when "
            "available, else cpu."
        ),
    ] = "",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Where to write the profile JSON.")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="A small grid (about two minutes on a laptop CPU).")
    ] = False,
    base: Annotated[
        Path | None,
        typer.Option(
            "--profile",
            help="Start from this profile: with --from-run, refine it; under torchrun without "
            "--from-run, keep its compute timings and measure only the collectives.",
        ),
    ] = None,
    from_run: Annotated[
        list[Path] | None,
        typer.Option(
            "--from-run",
            help="An rlhf-run folder (metrics.jsonl and the plan it ran); repeatable. Fits "
            "per-call-kind factors of the measured against the estimated call times and "
            "records them in the written profile. Measures nothing.",
        ),
    ] = None,
    plan_path: Annotated[
        list[Path] | None,
        typer.Option(
            "--plan",
            help="The plan each --from-run folder ran, in the same order (default: plan.json "
            "in the folder; benchmarks/e2e.py puts it there).",
        ),
    ] = None,
    skip: Annotated[
        int, typer.Option(min=0, help="--from-run: leading iterations to ignore (warm-up).")
    ] = 1,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            help="Re-time a few of this measured profile's own points here and say whether "
            "it still describes this machine (writes nothing; seconds on a CPU).",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Measure kernel and link timings on the local devices and write a profile (run under
    torchrun with several processes to time collectives too), refine a profile from
    rlhf-run measurements (--from-run), or check a profile against this machine (--check)."""
    from cli.profile_cmd import run_check_command, run_from_run_command, run_profile_command

    if check:
        run_check_command(check, as_json)
    elif from_run:
        run_from_run_command(from_run, plan_path or [], base, out_path, skip, as_json)
    else:
        run_profile_command(device, out_path, quick, base, as_json)


@app.command()
def search(
    experiment: Annotated[
        str, typer.Argument(help="Experiment TOML/JSON file or a built-in name (e.g. ppo-tiny).")
    ],
    nodes: Annotated[int, typer.Option(min=1, help="Nodes in the cluster.")] = 1,
    gpus_per_node: Annotated[int, typer.Option(min=1, help="Devices per node.")] = 8,
    device: Annotated[str, typer.Option(help="Device type (h100, a100, h200, cpu, ...).")] = "h100",
    profile_path: Annotated[
        Path | None, typer.Option("--profile", help="Measured profile JSON.")
    ] = None,
    any_profile_device: Annotated[
        bool,
        typer.Option(
            "--any-profile-device",
            help="Accept a --profile measured on another device type than --device (its "
            "timings then say little about the cluster).",
        ),
    ] = False,
    method: Annotated[
        Method, typer.Option(help="Search method or heuristic baseline.")
    ] = Method.mcmc,
    time_limit: Annotated[float, typer.Option(min=0.1, help="Search time limit, seconds.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Search seed.")] = 0,
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the plan JSON (without it, nothing is written)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Search the fastest placement of every model call (and write the plan with --out); prints
    the searched plan's estimate against every heuristic baseline."""
    from cli.search_cmd import run_search

    run_search(
        experiment,
        nodes,
        gpus_per_node,
        device,
        profile_path,
        any_profile_device,
        method.value,
        time_limit,
        seed,
        out_path,
        as_json,
    )


@app.command()
def estimate(
    plan: Annotated[Path, typer.Argument(help="Plan JSON file.")],
    profile_path: Annotated[
        Path | None, typer.Option("--profile", help="Measured profile JSON.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Estimate per-call time and memory, reallocations and iteration time of a plan."""
    from cli.estimate_views import calls_table, moves_table, profile_line, summary
    from estimator import load_profile, plan_report
    from plans import load_plan
    from plans.devices import profile_mismatch

    p = load_plan(plan)
    prof = load_profile(profile_path) if profile_path else None
    mismatch = prof and profile_mismatch(prof.device, p.cluster.device, str(profile_path))
    if mismatch:  # said, not refused: an estimate is a question, not a plan
        err.print(f"rlhf-plan estimate: warning: {mismatch}", highlight=False)
    report = plan_report(p, prof)
    if as_json:
        print_json(report.model_dump(mode="json", exclude={"timeline"}))
        if not report.feasible:
            raise typer.Exit(1)
        return
    out.print(profile_line(report))
    for w in report.warnings:
        out.print(f"note: {w}", highlight=False)
    out.print(calls_table(report))
    out.print(moves_table(report))
    out.print(summary(report))
    if not report.feasible:
        raise typer.Exit(1)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="First plan JSON.")],
    b: Annotated[Path, typer.Argument(help="Second plan JSON.")],
    as_json: JsonFlag = False,
) -> None:
    """Compare two plans call by call: placement, strategy, reallocations and estimated time."""
    from cli.search_cmd import run_diff

    run_diff(a, b, as_json)


@app.command()
def show(
    plan: Annotated[Path, typer.Argument(help="Plan JSON file.")],
    svg: Annotated[
        Path | None, typer.Option("--svg", help="Also write the timeline as an SVG picture.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a plan's allocation table and its timeline."""
    from cli.estimate_views import allocation_table, gantt, profile_line, summary, timeline_svg
    from estimator import plan_report
    from plans import load_plan
    from plans.fields import unused_role_notes

    p = load_plan(plan)
    report = plan_report(p)
    if as_json:
        if svg is not None:
            _write_svg(svg, timeline_svg(report))
        allocations = {name: a.model_dump(mode="json") for name, a in p.allocations.items()}
        print_json(
            {
                "plan": str(plan),
                "allocations": allocations,
                "svg": str(svg) if svg is not None else None,
                **report.model_dump(mode="json"),
            }
        )
        return
    out.print(allocation_table(report))
    out.print(gantt(report, width=max(30, out.width - 20)))
    out.print(summary(report))
    out.print(profile_line(report))
    for line in unused_role_notes(p.experiment):
        out.print(f"note: {line}", highlight=False)
    if svg is not None:
        _write_svg(svg, timeline_svg(report))
        out.print(f"wrote {svg}", highlight=False)


def _write_svg(path: Path, text: str) -> None:
    from plans import PlanError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise PlanError(f"cannot write the SVG: {e.strerror}", source=str(path)) from None


@app.command()
def graph(
    experiment: Annotated[
        str, typer.Argument(help="Experiment TOML/JSON file or a built-in name (e.g. ppo-tiny).")
    ],
    iterations: Annotated[int, typer.Option(min=1, max=1000, help="Iterations to unroll.")] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Print the dataflow graph of model calls of an experiment."""
    from cli.views import graph_tables
    from planner.graph import build_graph, graph_to_dict
    from plans import load_experiment

    exp = load_experiment(experiment)
    doc = graph_to_dict(build_graph(exp, iterations))
    if as_json:
        print_json({"experiment": exp.name, **doc})
    else:
        for table in graph_tables(exp, doc):
            out.print(table)


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="Plan JSON or experiment TOML/JSON file.")],
    kind: Annotated[
        DocKind, typer.Option(help="Document kind; auto looks at the content.")
    ] = DocKind.auto,
    as_json: JsonFlag = False,
) -> None:
    """Check a plan or an experiment; exit 1 listing every problem found, each naming its
    field (with --json: {"ok": false, "problems": [{source, field, message}, ...]})."""
    from plans import PlanError

    try:
        doc = _validated(path, kind)
    except PlanError as e:
        if not as_json:
            raise
        print_json({"ok": False, "path": str(path), "problems": e.problems()})
        raise typer.Exit(1) from None
    if as_json:
        print_json({"ok": True, "path": str(path), **doc})
    elif doc["kind"] == "plan":
        out.print(
            f"ok: {path}: {doc['algorithm']} plan, {len(doc['calls'])} calls on {doc['cluster']}",
            highlight=False,
        )
    else:
        out.print(
            f"ok: {path}: {doc['algorithm']} experiment {doc['name']!r} "
            f"({', '.join(doc['roles'])})",
            highlight=False,
        )
    for line in doc.get("notes", []):
        out.print(f"note: {line}", highlight=False)


def _validated(path: Path, kind: DocKind) -> dict:
    """What `validate` reports of a document that passed."""
    from plans import load_experiment, load_plan
    from plans.fields import unused_role_notes
    from plans.io import read_document

    if kind is DocKind.auto:
        is_plan = path.suffix.lower() != ".toml" and (
            {"allocations", "format_version", "cluster"} & set(read_document(path))
        )
        kind = DocKind.plan if is_plan else DocKind.experiment
    if kind is DocKind.plan:
        from plans.folders import check_plan_folders

        p = load_plan(path)
        check_plan_folders(p, source=str(path))  # validate: can the plan run here?
        e = p.experiment
        return {
            "kind": "plan",
            "algorithm": e.algorithm,
            "name": e.name,
            "roles": list(e.roles),
            "calls": {n: a.label() for n, a in p.allocations.items()},
            "cluster": p.cluster.label(),
            "notes": unused_role_notes(e),
        }
    e = load_experiment(path)
    return {
        "kind": "experiment",
        "algorithm": e.algorithm,
        "name": e.name,
        "roles": list(e.roles),
        "notes": unused_role_notes(e),
    }


@app.command()
def schema(
    kind: Annotated[SchemaKind, typer.Argument(help="Which document.")] = SchemaKind.plan,
) -> None:
    """Print the JSON Schema of a plan, experiment, cluster or profile document."""
    if kind is SchemaKind.profile:
        from estimator.profile import profile_schema

        print_json(profile_schema())
        return
    from plans.schema import json_schema

    print_json(json_schema(kind.value))


def main() -> None:
    run_app(app, "rlhf-plan")


if __name__ == "__main__":
    main()
