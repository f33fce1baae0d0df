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
  generation, and runs the prefill of all of them at once (as executor.compute.generate does).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from estimator.shapes import DTYPE_BYTES
from plans import MFC, Allocation, ExperimentSpec, ModelSpec


def split_layers(n_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, earlier stages taking the remainder (balanced split)."""
    base, extra = divmod(n_layers, pp)
    return [base + (1 if p < extra else 0) for p in range(pp)]


def stage_ranges(n_layers: int, pp: int) -> list[tuple[int, int]]:
    """[first, last + 1) layer of each pipeline stage (split_layers' split)."""
    out, start = [], 0
    for n in split_layers(n_layers, pp):
        out.append((start, start + n))
        start += n
    return out


def stage_params(model: ModelSpec, tp: int, pp: int) -> list[float]:
    """Parameters each pipeline stage holds on one tp rank."""
    layers = split_layers(model.num_hidden_layers, pp)
    h = model.hidden_size
    rep = model.replicated_block_params()  # norms and the o/down biases are replicated
    block = (model.block_params() - rep) / tp + rep
    out = []
    for p, n in enumerate(layers):
        params = n * block
        if p == 0:
            params += model.embedding_params() / tp
        if p == pp - 1:
            head = model.head_params() - h  # the projection: LM head split over tp
            if model.tie_word_embeddings and model.head == "lm" and pp > 1:
                head = model.embedding_params()  # tied, the last stage keeps its own copy
            params += h + (head / tp if model.head == "lm" else head)
        out.append(params)
    return out


def optimizer_bytes_per_param(dtype: str) -> int:
    """fp32 master copy (unless the weights are fp32 already) + two fp32 Adam moments."""
    return (0 if dtype == "float32" else 4) + 8


GRAD_BYTES = 4
"""Gradients accumulate and are reduced in fp32 whatever the weights' dtype
(executor.parallel.grads.attach_main_grads for bf16), in one buffer that lives as long as
the trained model."""


@dataclass(frozen=True, slots=True)
class CallMemory:
    """Bytes on the busiest device of one call's mesh, by kind."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    kv_cache: float

    @property
    def resident(self) -> float:
        """Kept after the call: the weights, and a trained model's gradient buffer and
        optimizer states (master weights and moments)."""
        return self.weights + self.grads + self.optimizer

    @property
    def transient(self) -> float:
        """Freed when the call ends."""
        return self.activations + self.kv_cache

    @property
    def total(self) -> float:
        return self.resident + self.transient

    def breakdown(self) -> dict[str, float]:
        return {
            "weights": self.weights,
            "grads": self.grads,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "kv_cache": self.kv_cache,
        }


def block_bytes_per_token(model: ModelSpec, tp: int, dt: int) -> float:
    """Bytes one transformer block keeps for backward per token, as executor.model.layers
    computes it (benchmarks/memory.py measures it): five hidden-size tensors (the two norms'
    inputs and outputs and the residual), plus an fp32 copy in a bf16 RMSNorm; q, the
    attention output and its transposed copy (3 x q width); k and v as attention reads them
    (repeated to q's width with grouped-query heads); gate, up, silu(gate) and their product
    (4 x MLP width). Head-sharded parts are 1/tp per rank, the hidden-size ones replicated."""
    h = model.hidden_size
    qw = model.num_attention_heads * model.head_dim / tp
    kvw = model.num_key_value_heads * model.head_dim / tp
    kv_read = qw if model.num_attention_heads > model.num_key_value_heads else kvw
    norms = 5 * h * dt + (4 * h if dt != 4 else 0)
    if model.qk_norm:  # Qwen3's q/k RMSNorms keep their inputs (and an fp32 copy in bf16)
        norms += (qw + kvw) * (dt + (4 if dt != 4 else 0))
    return norms + (3 * qw + 2 * kv_read + 4 * model.intermediate_size / tp) * dt


def train_activations(model: ModelSpec, s, tokens: float, vocab: float, dt: int) -> float:
    """Peak bytes a train call needs beyond weights, gradients and optimizer states, on its
    busiest pipeline stage. 1F1B (executor.parallel.pipeline) keeps at most pp - p
    micro-batches of `tokens` tokens in flight on stage p; with recompute a block keeps only
    its input, and one block's activations are rebuilt at a time in backward. The last stage
    adds the fp32 logits, their log-probs and gradient, and the final norm's and head
    input's tensors. The constants come from executor.model.layers' structure and are
    checked by benchmarks/memory.py."""
    per_token = block_bytes_per_token(model, s.tp, dt)
    h, best = model.hidden_size, 0.0
    head = tokens * (vocab * 4 * 3 + 2 * h * dt + 4 * h)
    # Backward through one block also holds its output's gradient and two MLP-wide ones (and
    # a bf16 RMSNorm's fp32 gradient).
    norm32 = 4 * h if dt != 4 else 0
    backward = tokens * ((2 * model.intermediate_size / s.tp + h) * dt + norm32)
    rebuilt = tokens * per_token + backward
    for p, n in enumerate(split_layers(model.num_hidden_layers, s.pp)):
        in_flight = min(s.micro_batches, s.pp - p)
        last = p == s.pp - 1
        # A stage that sends on keeps each in-flight micro-batch's output for its backward
        # and receives the gradient of one.
        a = 0.0 if last else (in_flight + 1) * tokens * h * dt
        if s.recompute:  # the head's tensors are gone before the last block is rebuilt
            a += n * tokens * h * dt * in_flight + max(rebuilt if n else 0.0, head if last else 0.0)
        else:  # the head's tensors are gone before the first block's backward
            a += n * tokens * per_token * in_flight + max(backward, head if last else 0.0)
        best = max(best, a)
    return best


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
        grads = params * GRAD_BYTES
        optimizer = params * optimizer_bytes_per_param(exp.dtype) / (s.dp if s.zero1 else 1)
        activations = train_activations(model, s, micro * seq, vocab, dt)
    elif mfc.kind == "inference":
        activations = micro * seq * ((4 * h + 3 * i_tp + qw + 2 * kvw) * dt + vocab * 4)
    else:  # generate: cache for all sequences of the dp rank, at full length; executor.compute.generate
        # runs the rank's whole share at once (micro-batches do not apply)
        rows = prompts = per_rank
        if exp.tree is not None:  # a tree (plans.tree): its replica's prompts, every leaf
            prompts = -(-exp.batch_size // s.dp)
            per_rank, rows = prompts * exp.tree.leaves, exp.tree.peak_cache_rows(prompts)
        kv = 2 * layers * rows * seq * kvw * dt
        prefill = prompts * exp.prompt_len * (4 * h + 3 * i_tp + qw + 2 * kvw) * dt
        activations = prefill + per_rank * vocab * 4 * 2
    return CallMemory(weights, grads, optimizer, activations, kv)


@lru_cache(maxsize=4096)
def shared_weight_bytes(
    model: ModelSpec,
    dtype: str,
    home: Allocation,
    copy: Allocation,
    gpus_per_node: int,
    hosting: bool = True,
) -> dict[int, float]:
    """Device -> bytes of a role's copy in layout `copy` that are memory of its home layout
    `home` on that device, as rlhf-run builds views (executor.realloc.move, plans.residency):
    a piece equal to a home piece is that very tensor; where one tp slice holds the other,
    the rows (q, k, v, gate, up, embedding, LM head) are shared too -- views into the home
    when the copy's slice is narrower, the home's rows living inside the copy when it is
    wider and the role hosts (`hosting`: plans.residency.Residency.hosting); norms and a
    value head are replicated, so always shared. The o/down column blocks of a narrower or
    wider slice are copies. Slices are compared as fractions of the heads, which never
    counts more than is shared (kv heads replicated over tp ranks can share more)."""
    dt = DTYPE_BYTES[dtype]
    h = model.hidden_size
    row = h * model.num_attention_heads * model.head_dim + h * model.intermediate_size
    rep = model.replicated_block_params()  # norms, o/down biases
    col = model.block_params() - rep - row  # q, k, v, gate, up (and their biases)
    lm_head = model.head_params() - h if model.head == "lm" else 0.0
    replicated_head = h + (model.head_params() - h if model.head == "value" else 0.0)
    hs, cs = home.strategy, copy.strategy

    def positions(alloc: Allocation) -> dict[int, tuple[int, int]]:
        grid = alloc.rank_grid(gpus_per_node)
        s = alloc.strategy
        return {
            grid[p][d][t]: (p, t) for p in range(s.pp) for d in range(s.dp) for t in range(s.tp)
        }

    home_layers = stage_ranges(model.num_hidden_layers, hs.pp)
    copy_layers = stage_ranges(model.num_hidden_layers, cs.pp)
    home_at = positions(home)
    out: dict[int, float] = {}
    for rank, (pc, tc) in positions(copy).items():
        if rank not in home_at:
            continue
        ph, th = home_at[rank]
        (a0, a1), (b0, b1) = home_layers[ph], copy_layers[pc]
        n = max(0, min(a1, b1) - max(a0, b0))
        ih, ic = (th / hs.tp, (th + 1) / hs.tp), (tc / cs.tp, (tc + 1) / cs.tp)
        nested = (ic[0] >= ih[0] and ic[1] <= ih[1]) or (
            ih[0] >= ic[0] and ih[1] <= ic[1] and hosting
        )
        part = min(1 / hs.tp, 1 / cs.tp)
        if ih == ic:  # the very tensors
            blocks, rows = n * (model.block_params() - rep) * part, part
        elif nested:
            blocks, rows = n * col * part, part
        else:
            blocks, rows = 0.0, 0.0
        shared = blocks + n * rep
        first, last = (ph == 0 and pc == 0), (ph == hs.pp - 1 and pc == cs.pp - 1)
        if first:
            shared += model.embedding_params() * rows
        if last:
            shared += replicated_head + lm_head * rows
        out[rank] = shared * dt
    return out
