"""Rich renderings of contract objects for the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from plans import ExperimentSpec


def graph_tables(exp: ExperimentSpec, doc: dict[str, Any]) -> list[Table]:
    calls = Table(
        title=f"{exp.name}: {doc['algorithm']} calls in global order ({doc['iterations']} iteration(s))"
    )
    for col in ("#", "call", "iter", "role", "model", "kind", "inputs", "outputs"):
        calls.add_column(col)
    for i, n in enumerate(doc["nodes"]):
        calls.add_row(
            str(i),
            n["mfc"],
            str(n["iteration"]),
            n["role"],
            exp.model(n["role"]).name,
            n["kind"],
            ", ".join(n["inputs"]),
            ", ".join(n["outputs"]),
        )
    edges = Table(title="edges")
    for col in ("from", "to", "kind", "keys"):
        edges.add_column(col)
    for e in doc["edges"]:
        edges.add_row(e["source"], e["target"], e["kind"], " ".join(e["keys"]) or "(parameters)")
    return [calls, edges]
