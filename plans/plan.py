"""The plan: a cluster, an experiment and one allocation per model function call."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.algorithms import MFC, mfcs
from plans.allocation import Allocation
from plans.cluster import ClusterSpec
from plans.errors import PlanError
from plans.experiment import ExperimentSpec
from plans.fields import kl_setting
from plans.residency import layout_key
from plans.staleness import home_layout_calls
from plans.strict import STRICT

FORMAT_VERSION = 1


class CallEstimate(BaseModel):
    """The cost model's figures for one call."""

    model_config = ConfigDict(extra="forbid", **STRICT)

    time_s: float = Field(ge=0, description="Estimated wall time of the call, seconds.")
    peak_memory_gib: float = Field(
        ge=0, description="Estimated peak memory on its busiest device, GiB."
    )


class PlanEstimate(BaseModel):
    """What the planner's cost model predicted when the plan was written."""

    model_config = ConfigDict(extra="forbid", **STRICT)

    iteration_time_s: float = Field(
        ge=0, description="Steady-state time of one iteration, seconds."
    )
    calls: dict[str, CallEstimate] = Field(
        default_factory=dict, description="Per-call estimates by MFC name."
    )
    realloc_time_s: float = Field(
        0.0, ge=0, description="Parameter reallocation time per iteration, seconds."
    )
    profile: str = Field(
        "analytic",
        description="Identity of the profile used: `analytic:<device>` or a measured profile's id.",
    )


class Provenance(BaseModel):
    """How the plan was made."""

    model_config = ConfigDict(extra="forbid", **STRICT)

    method: str = Field(
        "manual", description="mcmc, exhaustive, symmetric, separated, megatron or manual."
    )
    seed: int | None = Field(None, description="Search seed.")
    search_time_s: float | None = Field(None, ge=0, description="Wall time of the search, seconds.")
    tool_version: str | None = Field(
        None, description="Version of the planner that wrote the plan."
    )
    created: str | None = Field(None, description="ISO-8601 time of writing.")


class Plan(BaseModel):
    """A self-contained, executable placement of one RLHF experiment on one cluster."""

    model_config = ConfigDict(extra="forbid", **STRICT)

    format_version: int = Field(FORMAT_VERSION, description="Plan file format version.")
    cluster: ClusterSpec = Field(description="The target cluster.")
    experiment: ExperimentSpec = Field(
        description="The experiment, embedded so the file stands alone."
    )
    allocations: dict[str, Allocation] = Field(
        description="One allocation per model function call, by MFC name."
    )
    max_staleness: int = Field(
        0,
        ge=0,
        description="Iterations the actor's generation runs ahead of its training "
        "(plans.staleness; at most the experiment's `async.max_staleness`).",
    )
    estimate: PlanEstimate | None = Field(None, description="The planner's estimate, if any.")
    provenance: Provenance = Field(default_factory=Provenance, description="How the plan was made.")

    @model_validator(mode="after")
    def _check(self) -> Plan:
        check_plan(self)
        return self

    def mfc(self, name: str) -> MFC:
        return {m.name: m for m in self.experiment.mfcs()}[name]


def check_plan(plan: Plan) -> None:
    """Semantic checks the field types cannot express; raises PlanError naming the field."""
    if plan.format_version != FORMAT_VERSION:
        raise PlanError(
            f"format {plan.format_version} is not supported (this version reads {FORMAT_VERSION})",
            field="format_version",
        )
    exp, cl = plan.experiment, plan.cluster
    calls = {m.name: m for m in exp.mfcs()}
    bad: list[PlanError] = []  # every call's problem, not only the first call's
    if plan.max_staleness > exp.async_.max_staleness:
        bad.append(
            PlanError(
                f"{plan.max_staleness} exceeds the experiment's async.max_staleness = "
                f"{exp.async_.max_staleness}",
                field="max_staleness",
            )
        )
    if plan.max_staleness and set(calls) <= set(plan.allocations):
        layouts = {n: layout_key(plan.allocations[n]) for n in calls}
        for name in home_layout_calls(exp.mfcs(), plan.max_staleness, layouts):
            bad.append(
                PlanError(
                    f"{name} shares the layout of its role's train call: generating ahead "
                    "would gain no time there (set it to 0, or give generation its own devices)",
                    field="max_staleness",
                )
            )
    table = {m.name for m in mfcs(exp.algorithm)}
    for name in plan.allocations:
        if name in table and name not in calls:
            # An allocation for a call the experiment leaves out would place, and the
            # estimate would price, work that never runs.
            bad.append(
                PlanError(
                    f"{name!r} does not run: nothing in this experiment reads its outputs "
                    f"({kl_setting(exp)} = 0); remove its allocation",
                    field=f"allocations.{name}",
                )
            )
        elif name not in calls:
            bad.append(
                PlanError(
                    f"{exp.algorithm} has no call {name!r} (its calls: {', '.join(calls)})",
                    field=f"allocations.{name}",
                )
            )
    for name, mfc in calls.items():
        if name not in plan.allocations:
            bad.append(
                PlanError(
                    f"no allocation for the {exp.algorithm} call {name!r}",
                    field=f"allocations.{name}",
                )
            )
            continue
        try:
            check_allocation(plan.allocations[name], mfc, exp, cl, field=f"allocations.{name}")
        except PlanError as e:
            bad.append(e)
    if bad:
        raise PlanError(bad[0].reason, field=bad[0].field, more=bad[1:])


def check_allocation(
    alloc: Allocation, mfc: MFC, exp: ExperimentSpec, cl: ClusterSpec, field: str
) -> None:
    """One allocation against its call, model and cluster (the planner reuses this for candidates)."""
    m, s = alloc.mesh, alloc.strategy
    if m.node_start + m.n_nodes > cl.nodes:
        raise PlanError(
            f"nodes {m.node_start}..{m.node_start + m.n_nodes - 1} lie outside the cluster's "
            f"{cl.nodes} node(s)",
            field=f"{field}.mesh.n_nodes",
        )
    if m.gpu_start + m.n_gpus > cl.gpus_per_node:
        raise PlanError(
            f"devices {m.gpu_start}..{m.gpu_start + m.n_gpus - 1} lie outside a node of "
            f"{cl.gpus_per_node}",
            field=f"{field}.mesh.n_gpus",
        )
    if m.n_nodes > 1 and m.n_gpus != cl.gpus_per_node:
        raise PlanError(
            f"a mesh spanning nodes takes all {cl.gpus_per_node} devices of each, not {m.n_gpus}",
            field=f"{field}.mesh.n_gpus",
        )
    model = exp.model(mfc.role)
    # Whole query heads per rank; kv heads split evenly or, when tp exceeds them (GQA),
    # replicated evenly (each kv head on tp/nkv ranks, as Megatron does).
    nh, nkv = model.num_attention_heads, model.num_key_value_heads
    if nh % s.tp:
        raise PlanError(
            f"tp={s.tp} does not divide num_attention_heads={nh} of the {mfc.role} model",
            field=f"{field}.strategy.tp",
        )
    if nkv % s.tp and s.tp % nkv:
        raise PlanError(
            f"tp={s.tp} neither divides nor is a multiple of num_key_value_heads={nkv} of the "
            f"{mfc.role} model",
            field=f"{field}.strategy.tp",
        )
    if s.pp > model.num_hidden_layers:
        raise PlanError(
            f"pp={s.pp} exceeds the {model.num_hidden_layers} layers of the {mfc.role} model",
            field=f"{field}.strategy.pp",
        )
    per_step = exp.sequences_per_step(mfc)
    if s.dp * s.micro_batches > per_step:
        raise PlanError(
            f"dp*micro_batches = {s.dp}*{s.micro_batches} exceeds the {per_step} sequences per step",
            field=f"{field}.strategy.micro_batches",
        )
    if s.zero1 and mfc.kind != "train":
        raise PlanError(
            "optimizer sharding applies to train calls only", field=f"{field}.strategy.zero1"
        )
    if s.recompute and mfc.kind != "train":
        raise PlanError(
            "activation checkpointing applies to train calls only",
            field=f"{field}.strategy.recompute",
        )
