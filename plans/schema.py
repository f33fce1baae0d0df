"""JSON Schemas of the contract documents."""

from __future__ import annotations

from typing import Any

from plans.cluster import ClusterSpec
from plans.experiment import ExperimentSpec
from plans.plan import Plan

SCHEMAS = {"plan": Plan, "experiment": ExperimentSpec, "cluster": ClusterSpec}


def json_schema(kind: str) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a document kind: plan, experiment or cluster."""
    schema = SCHEMAS[kind].model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
