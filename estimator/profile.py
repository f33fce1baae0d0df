"""The profile format: measured (or analytic) timings the cost model reads.

A profile is one JSON document. `ops` hold compute timings of the model's pieces (embedding, one
transformer block, a decode step, the head, the optimizer update) for one rank's *shard*: a
`tp=k` entry timed a block with 1/k of the heads and MLP columns, so the tensor-parallel degree is
part of the shard's shape. `collectives` hold link timings over group and message sizes, split
into intra-node and inter-node. `roofline` is the throughput the cost model scales with: how a
timing transfers to a shape or size outside the grid, and what ops the profile lacks cost.

An *analytic* profile has no tables: every figure comes from the roofline, which is the device
table's datasheet numbers times the stated `efficiency` factors. Its id always starts with
`analytic:` and every output that uses it says so; a measured profile, when given, always wins.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plans import ClusterSpec, PlanError
from plans.errors import from_validation_error

PROFILE_FORMAT_VERSION = 1

OpName = Literal[
    "embedding_fwd",
    "embedding_fwd_bwd",
    "block_fwd",
    "block_fwd_bwd",
    "decode",
    "head_fwd",
    "head_fwd_bwd",
    "optimizer",
    "sample",
    "generate_step",
    "block_recompute",
    "infer_pass",
    "train_pass",
]
CollectiveName = Literal["all_reduce", "all_gather", "reduce_scatter", "broadcast", "send_recv"]
Scope = Literal["intra", "inter"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ShardShape(_Doc):
    """The per-rank shape a timing was taken on (a model's dimensions divided by tp)."""

    model: str = Field("custom", description="Label of the model the shard came from.")
    tp: int = Field(1, ge=1, description="Tensor-parallel degree the shard was cut for.")
    hidden_size: int = Field(gt=0, description="Residual width (never split).")
    intermediate_size: int = Field(gt=0, description="MLP columns on this rank.")
    num_heads: int = Field(gt=0, description="Query heads on this rank.")
    num_kv_heads: int = Field(gt=0, description="Key/value heads on this rank.")
    head_dim: int = Field(gt=0, description="Width of one head.")
    vocab_size: int = Field(gt=0, description="Vocabulary rows on this rank (LM head/embedding).")
    dtype_bytes: int = Field(4, gt=0, description="Bytes per weight/activation element.")


class OpTiming(_Doc):
    """Time of one op at one grid point (the profile's `statistic` of repeated runs)."""

    op: OpName = Field(
        description="embedding_fwd[_bwd], block_fwd[_bwd], decode (one block, one new token per "
        "sequence against a KV cache), head_fwd[_bwd] (final norm, LM head, log-softmax), "
        "optimizer (zero grads, clip and AdamW of `batch` parameters in `seq_len` tensors), sample (choosing one token "
        "per sequence from full-vocabulary logits), generate_step (one token of the executor's "
        "generation loop on a one-block model: decode, embedding, head, sampling, bookkeeping), "
        "block_recompute (block_fwd_bwd with activation checkpointing: the forward once more, "
        "torch's checkpoint bookkeeping), infer_pass and train_pass (one padded micro-batch "
        "through the executor's inference call or training pass on a one-block model, "
        "everything included but the optimizer step)."
    )
    shape: ShardShape = Field(description="The shard that was timed.")
    batch: int = Field(gt=0, description="Sequences (optimizer: parameters updated).")
    seq_len: int = Field(
        gt=0,
        description="Tokens per sequence; for `decode`, the KV cache length; for `optimizer`, "
        "the number of parameter tensors.",
    )
    time_s: float = Field(gt=0, description="Seconds, on the profile's `clock`.")


class CollectiveTiming(_Doc):
    """Median time of one collective at one message size."""

    op: CollectiveName = Field(description="Which collective (send_recv: one pair).")
    group_size: int = Field(ge=2, description="Ranks taking part.")
    scope: Scope = Field(description="intra: inside one node; inter: the group spans nodes.")
    bytes: int = Field(gt=0, description="Message size per rank (the full tensor), bytes.")
    time_s: float = Field(gt=0, description="Median wall time, seconds.")
    after_s: float = Field(
        0.0,
        ge=0,
        description="Seconds every rank computed right before each call (timed in context, "
        "back to back); 0: timed right after a barrier. Ranks computing in lockstep drift "
        "apart, and the first to arrive waits, more the longer they computed.",
    )


class Efficiency(_Doc):
    """Stated fractions of datasheet peaks an analytic profile assumes (and the fixed costs)."""

    compute: float = Field(0.5, gt=0, le=1, description="Fraction of peak FLOP/s in matmuls.")
    memory: float = Field(0.7, gt=0, le=1, description="Fraction of HBM bandwidth achieved.")
    link: float = Field(0.8, gt=0, le=1, description="Fraction of link bandwidth achieved.")
    kernel_latency_s: float = Field(
        2e-5, ge=0, description="Fixed cost of one block/op invocation (kernel launches), seconds."
    )
    collective_latency_intra_s: float = Field(
        1e-6, ge=0, description="Fixed cost of one ring step inside a node (NVLink), seconds."
    )
    collective_latency_inter_s: float = Field(
        5e-6, ge=0, description="Fixed cost of one ring step between nodes (network), seconds."
    )


class Roofline(_Doc):
    """Sustained throughputs of one device: FLOP/s, memory bytes/s and link bytes/s."""

    flops_per_s: float = Field(gt=0, description="Sustained dense FLOP/s.")
    memory_bytes_per_s: float = Field(gt=0, description="Sustained memory bandwidth, bytes/s.")
    intra_node_bytes_per_s: float = Field(gt=0, description="Link bandwidth inside a node.")
    inter_node_bytes_per_s: float = Field(gt=0, description="Network bandwidth between nodes.")
    fresh_memory_bytes_per_s: float | None = Field(
        None,
        gt=0,
        description="Writing into newly allocated memory (on a CPU: page faults), bytes/s. "
        "Measured for the record; nothing is priced with it, since rlhf-run reuses the memory "
        "of reallocation destinations and of the DP gradient buffer from step to step.",
    )
    copy_memory_bytes_per_s: float | None = Field(
        None,
        gt=0,
        description="Copying between buffers already in use (torch copy_, one thread on a "
        "CPU), bytes copied per second: the local copies, packing and unpacking of a "
        "reallocation. None: half of memory_bytes_per_s (a copy reads and writes each byte).",
    )


CallKind = Literal["generate", "inference", "train"]


class ContentionTiming(_Doc):
    """One pass of a whole model through the executor's call code, timed on one worker while
    the node's other workers idle and while another runs the same pass (CPU profiles under
    torchrun: cores of one CPU share caches and memory, and may be one core's two threads)."""

    kind: CallKind = Field(description="Which call's pass: generate, inference or train.")
    model: str = Field(
        description="Model that was timed, all its blocks at tp 1: a preset, or one of the "
        "sizes between two (executor.profiling.contention.BETWEEN)."
    )
    params: float = Field(gt=0, description="Its parameter count.")
    alone_s: float = Field(gt=0, description="Median seconds, the other workers idle.")
    together_s: float = Field(gt=0, description="Median seconds, another worker busy alike.")


class KindFactors(_Doc):
    """How measured calls of one kind relate to the profile's prediction: measured seconds =
    scale x (the call's compute seconds from the op timings) + comm_scale x its communication
    seconds (from the collective timings) + overhead_s x passes."""

    scale: float = Field(1.0, gt=0, description="Factor on the compute seconds.")
    overhead_s: float = Field(
        0.0,
        ge=0,
        description="Fixed seconds per pass (micro-batch forward or forward+backward; "
        "generate: per decoded token) the op timings do not see (Python, bookkeeping).",
    )
    samples: int = Field(0, ge=0, description="Measured calls (medians over iterations) fitted.")
    error_before: float = Field(
        0.0, ge=0, description="Median relative error of those calls before the fit."
    )
    error_after: float = Field(
        0.0, ge=0, description="Median relative error of those calls after the fit."
    )


class Calibration(_Doc):
    """Per-call-kind factors fitted to rlhf-run measurements (see estimator.calibrate)."""

    kinds: dict[CallKind, KindFactors] = Field(
        default_factory=dict, description="Factors by call kind; kinds not listed are unchanged."
    )
    comm_scale: float = Field(
        1.0,
        gt=0,
        description="Factor on every call's communication seconds (tp, pp, dp; all kinds).",
    )
    contention: float = Field(
        0.0,
        ge=0,
        description="Extra share of a call's compute seconds (from op timings) when the other "
        "devices of its node are busy the whole time (cores of one CPU share caches, memory "
        "and the page allocator): seconds x (1 + contention x busy share of the others).",
    )
    fitted: list[str] = Field(
        default_factory=list,
        description="Which factors the runs determined (the others kept their defaults).",
    )
    rule_reward_s_per_seq: float | None = Field(
        None, ge=0, description="Measured seconds per scored sequence of a rule reward."
    )


class Refinement(_Doc):
    """One change made to a profile after it was measured, and where it came from."""

    what: Literal["collectives", "calibration", "memory"] = Field(
        description="collectives: link timings measured into it (compute timings kept); "
        "calibration: per-call-kind factors fitted to rlhf-run measurements; memory: "
        "memory-copy and fresh-memory rates measured into it (everything else kept)."
    )
    created: str = Field(description="ISO-8601 time of the change.")
    command: str = Field("", description="The command line that made it.")
    base_id: str = Field(description="Id of the profile it was made from.")
    sources: list[str] = Field(
        default_factory=list, description="Run folders (metrics.jsonl) it was fitted to."
    )
    note: str = Field("", description="What was measured or fitted, in words.")


class Profile(_Doc):
    """Timings of one device type, measured by `rlhf-plan profile` or derived analytically."""

    format_version: int = Field(PROFILE_FORMAT_VERSION, description="Profile format version.")
    kind: Literal["measured", "analytic"] = Field(description="measured or analytic.")
    id: str = Field(description="Identity recorded in plans: `analytic:<device>` or a label.")
    device: str = Field(description="Device type of the device table (cpu, h100, ...).")
    device_name: str = Field("", description="What torch called the device (CPU/GPU model).")
    dtype: str = Field("bfloat16", description="Dtype of the timed weights and activations.")
    threads: int | None = Field(None, description="torch threads per process (CPU profiles).")
    model_code: str = Field(
        "", description="Which model implementation was timed (executor or fallback)."
    )
    clock: str = Field(
        "perf_counter",
        description="Clock of the timings: perf_counter (wall) or process_time (CPU time of a "
        "one-thread process, robust to other jobs on the machine).",
    )
    statistic: Literal["min", "median"] = Field(
        "min",
        description="What an op timing is of its repeated runs: median (profiles since "
        "2026-12-03), or min (earlier CPU profiles took the fastest run).",
    )
    created: str | None = Field(None, description="ISO-8601 time of measurement.")
    decode_stack_bytes: float | None = Field(
        None,
        description="`decode` and `generate_step` were timed through a stack of distinct blocks "
        "holding this many weight bytes (at most 12 blocks; see estimator.shapes.decode_stack), "
        "so weights stream from memory as in a whole model; null: through one block.",
    )
    command: str | None = Field(None, description="The command line that made the profile.")
    torch_version: str | None = Field(None, description="torch version used.")
    efficiency: Efficiency = Field(
        default_factory=Efficiency, description="Stated factors (analytic figures only)."
    )
    roofline: Roofline = Field(description="Throughputs used to scale beyond the tables.")
    ops: list[OpTiming] = Field(default_factory=list, description="Compute timings.")
    collectives: list[CollectiveTiming] = Field(
        default_factory=list, description="Collective timings (need torchrun)."
    )
    contention: list[ContentionTiming] = Field(
        default_factory=list,
        description="Passes timed alone and next to a busy worker (CPU, need torchrun): how "
        "much a call slows down while the other devices of its node compute.",
    )
    calibration: Calibration | None = Field(
        None,
        description="Factors fitted to measured rlhf-run calls (`rlhf-plan profile --from-run`); "
        "the cost model applies them on top of the op and collective timings.",
    )
    refinements: list[Refinement] = Field(
        default_factory=list, description="Changes made after measurement, oldest first."
    )

    @property
    def label(self) -> str:
        """How outputs name the profile: analytic ones say so."""
        return self.id if self.kind == "measured" else f"{self.id} (analytic roofline)"

    def refined(
        self,
        update: dict[str, Any],
        what: str,
        stamp: datetime,
        command: str,
        note: str,
        sources: list[str] | None = None,
    ) -> Profile:
        """This profile with the fields in `update` replaced and the change recorded in
        `refinements` (made at `stamp` by `command`, from this profile's id)."""
        done = Refinement(
            what=what,
            created=stamp.isoformat(timespec="seconds"),
            command=command,
            base_id=self.id,
            sources=sources or [],
            note=note,
        )
        return self.model_copy(update={**update, "refinements": [*self.refinements, done]})


def profile_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a profile document."""
    schema = Profile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def load_profile(path: str | Path) -> Profile:
    """Read a profile JSON file; any problem is one PlanError naming the file and field."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError("no such file", source=str(path)) from None
    except IsADirectoryError:
        raise PlanError("is a folder, not a file", source=str(path)) from None
    except json.JSONDecodeError as e:
        raise PlanError(f"not valid JSON: {e.msg} at line {e.lineno}", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"cannot read: {e}", source=str(path)) from None
    return profile_from_dict(doc, source=str(path))


def profile_from_dict(doc: Any, source: str | None = None) -> Profile:
    if not isinstance(doc, dict):
        raise PlanError("a profile must be a JSON object", source=source)
    version = doc.get("format_version", PROFILE_FORMAT_VERSION)
    if version != PROFILE_FORMAT_VERSION:
        raise PlanError(
            f"profile format {version!r} is not supported (this version reads "
            f"{PROFILE_FORMAT_VERSION})",
            field="format_version",
            source=source,
        )
    try:
        return Profile.model_validate(doc)
    except ValidationError as e:
        err = from_validation_error(e)
        raise (err.with_source(source) if source else err) from None


def save_profile(profile: Profile, path: str | Path) -> None:
    from plans.io import write_json_atomic

    write_json_atomic(profile.model_dump(mode="json"), Path(path))


def analytic_profile(cluster: ClusterSpec, efficiency: Efficiency | None = None) -> Profile:
    """A table-free profile: datasheet figures of the cluster's device times `efficiency`."""
    eff = efficiency or Efficiency()
    gb = 1e9
    return Profile(
        kind="analytic",
        id=f"analytic:{cluster.device}",
        device=cluster.device,
        device_name=f"{cluster.device} (datasheet)",
        efficiency=eff,
        roofline=Roofline(
            flops_per_s=float(cluster.peak_tflops) * 1e12 * eff.compute,
            memory_bytes_per_s=float(cluster.hbm_gbps) * gb * eff.memory,
            intra_node_bytes_per_s=float(cluster.intra_node_gbps) * gb * eff.link,
            inter_node_bytes_per_s=float(cluster.inter_node_gbps) * gb * eff.link,
        ),
    )
