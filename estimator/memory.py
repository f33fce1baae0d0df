"""Memory of one device: resident weights, gradients, optimizer states, activations, KV cache.

Assumptions (stated so tests can check them by hand):
- Weights are held in the experiment's dtype; a rank holds its pipeline stage's layers (the
  embedding on the first stage, final norm and head on the last) divided by tp (vocabulary-
  parallel embedding and LM head; RMSNorm weights and the value head are replicated). The
  heaviest stage is reported.
- Trained models keep gradients in the weight dtype during the train call, and AdamW states
  for the whole run: an fp32 master copy (omitted when the weights are already fp32) and two
  fp32 moments. ZeRO-1 divides the optimizer part by dp.
- No activation recomputation: a train micro-batch keeps every block's saved tensors (flash-
  style attention, no s x s matrix), and a 1F1B pipeline keeps min(m, pp) micro-batches alive
  on its first stage. The LM head keeps fp32 logits and their gradient.
- Generation keeps a KV cache for every sequence on the dp rank at full length prompt +
  generation, and runs the prefill of all of them at once (as executor.generate does).
"""

from __future__ import annotations

from dataclasses import dataclass

from estimator.shapes import DTYPE_BYTES
from plans import MFC, Allocation, ExperimentSpec, ModelSpec


def split_layers(n_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, earlier stages taking the remainder (balanced split)."""
    base, extra = divmod(n_layers, pp)
    return [base + (1 if p < extra else 0) for p in range(pp)]


def stage_params(model: ModelSpec, tp: int, pp: int) -> list[float]:
    """Parameters each pipeline stage holds on one tp rank."""
    layers = split_layers(model.num_hidden_layers, pp)
    h = model.hidden_size
    block = (model.block_params() - 2 * h) / tp + 2 * h  # the two RMSNorms are replicated
    out = []
    for p, n in enumerate(layers):
        params = n * block
        if p == 0:
            params += model.embedding_params() / tp
        if p == pp - 1:
            head = model.head_params() - h  # the projection: LM head split over tp
            params += h + (head / tp if model.head == "lm" else head)
        out.append(params)
    return out


def optimizer_bytes_per_param(dtype: str) -> int:
    """fp32 master copy (unless the weights are fp32 already) + two fp32 Adam moments."""
    return (0 if dtype == "float32" else 4) + 8


@dataclass(frozen=True, slots=True)
class CallMemory:
    """Bytes on the busiest device of one call's mesh, by kind."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    kv_cache: float

    @property
    def transient(self) -> float:
        """Freed when the call ends."""
        return self.grads + self.activations + self.kv_cache

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.transient

    def breakdown(self) -> dict[str, float]:
        return {
            "weights": self.weights,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "kv_cache": self.kv_cache,
        }


def call_memory(mfc: MFC, alloc: Allocation, exp: ExperimentSpec) -> CallMemory:
    model = exp.model(mfc.role)
    s = alloc.strategy
    dt = DTYPE_BYTES[exp.dtype]
    params = max(stage_params(model, s.tp, s.pp))
    weights = params * dt
    h, i_tp = model.hidden_size, model.intermediate_size / s.tp
    qw = model.num_attention_heads * model.head_dim / s.tp
    kvw = model.num_key_value_heads * model.head_dim / s.tp
    vocab = (model.vocab_size / s.tp) if model.head == "lm" else 1
    layers = max(split_layers(model.num_hidden_layers, s.pp))
    seq = exp.seq_len
    per_rank = -(-exp.sequences_per_step(mfc) // s.dp)
    micro = -(-per_rank // s.micro_batches)
    grads = optimizer = activations = kv = 0.0
    if mfc.kind == "train":
        grads = params * dt
        optimizer = params * optimizer_bytes_per_param(exp.dtype) / (s.dp if s.zero1 else 1)
        # Saved tensors per token per block: norms/residuals (6h), q/k/v/attention out, MLP.
        per_token = (6 * h + 2 * qw + 2 * kvw + 4 * i_tp) * dt
        in_flight = min(s.micro_batches, s.pp)
        activations = layers * micro * seq * per_token * in_flight
        activations += micro * seq * vocab * 4 * 2  # fp32 logits and their gradient
    elif mfc.kind == "inference":
        activations = micro * seq * ((4 * h + 3 * i_tp + qw + 2 * kvw) * dt + vocab * 4)
    else:  # generate: cache for all sequences of the dp rank, at full length; executor.generate
        # runs the rank's whole share at once (micro-batches do not apply)
        kv = 2 * layers * per_rank * seq * kvw * dt
        prefill = per_rank * exp.prompt_len * (4 * h + 3 * i_tp + qw + 2 * kvw) * dt
        activations = prefill + per_rank * vocab * 4 * 2
    return CallMemory(weights, grads, optimizer, activations, kv)
