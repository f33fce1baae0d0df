"""Which slice of each Hugging Face parameter a rank holds under a (tp, pp) position.

Names are the HF LLaMA keys (`model.layers.3.self_attn.q_proj.weight`, `lm_head.weight`,
`score.weight`), so one table serves model construction, checkpoint loading (each rank reads
only its rows/columns), saving (gathering) and gradient-norm bookkeeping. DP replicas hold the
same slices as dp rank 0, so dp does not appear here.

TP follows gpt-fast / Megatron: q, k, v, gate, up, the embedding and the LM head are split on
their output dim (dim 0 of the [out, in] weight, and their biases with it), o and down on
their input dim (dim 1; their biases are added after the sum, so replicated); norms (Qwen3's
per-head q/k norms included) and the value head are replicated. Attention is split by whole heads. When tp exceeds
the key/value head count (GQA), each kv head is replicated on the tp/kv ranks whose query
heads use it, and the gradient of those copies is a partial sum that must be added up.
"""

from __future__ import annotations

from dataclasses import dataclass

from plans.model import ModelSpec
from plans.slicing import split_range


@dataclass(frozen=True)
class ParamSlice:
    """One parameter as held by one rank: rows/columns [start, stop) of `dim` of the full
    tensor, or the whole tensor when `dim` is None."""

    name: str
    """Key in the model's state_dict (HF naming, global layer index)."""
    source: str
    """Checkpoint key it is read from and written to (differs only for a tied LM head)."""
    full_shape: tuple[int, ...]
    dim: int | None
    start: int
    stop: int
    grad_owner: bool
    """Counted in the global gradient norm on this rank: the first tp rank holding this slice,
    and not the last stage's copy of a tied embedding (the first stage counts it)."""
    partial_grad: bool = False
    """Its gradient is this rank's share only: sum it over the tp ranks holding the same slice."""

    @property
    def shape(self) -> tuple[int, ...]:
        if self.dim is None:
            return self.full_shape
        s = list(self.full_shape)
        s[self.dim] = self.stop - self.start
        return tuple(s)

    def index(self) -> tuple[slice, ...]:
        """Index of this slice in the full tensor."""
        idx = [slice(None)] * len(self.full_shape)
        if self.dim is not None:
            idx[self.dim] = slice(self.start, self.stop)
        return tuple(idx)


def stage_layers(spec: ModelSpec, pp: int, stage: int) -> range:
    """Global indices of the transformer blocks on pipeline stage `stage`."""
    if pp > spec.num_hidden_layers:
        raise ValueError(f"pp={pp} exceeds num_hidden_layers={spec.num_hidden_layers}")
    return range(*split_range(spec.num_hidden_layers, pp, stage))


def check_tp(spec: ModelSpec, tp: int) -> None:
    """Head-wise attention split needs whole query heads per rank and kv heads either split
    evenly or replicated evenly."""
    nh, nkv = spec.num_attention_heads, spec.num_key_value_heads
    if nh % tp:
        raise ValueError(f"tp={tp} does not divide num_attention_heads={nh}")
    if nkv % tp and tp % nkv:
        raise ValueError(f"tp={tp} and num_key_value_heads={nkv}: neither divides the other")


@dataclass(frozen=True)
class HeadSplit:
    """Attention heads of one tp rank."""

    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    kv_replicas: int
    """How many tp ranks hold the same kv heads (1 unless tp > num_key_value_heads)."""

    @property
    def n_q(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def n_kv(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]


def head_split(spec: ModelSpec, tp: int, tp_rank: int) -> HeadSplit:
    check_tp(spec, tp)
    nh, nkv = spec.num_attention_heads, spec.num_key_value_heads
    q = split_range(nh, tp, tp_rank)
    if tp <= nkv:
        return HeadSplit(q, split_range(nkv, tp, tp_rank), 1)
    reps = tp // nkv
    head = tp_rank // reps
    return HeadSplit(q, (head, head + 1), reps)


def param_slices(spec: ModelSpec, tp: int, tp_rank: int, pp: int, pp_rank: int) -> list[ParamSlice]:
    """Every parameter of stage `pp_rank` as held by tp rank `tp_rank`, in HF key order."""
    h, hd, inter, vocab = spec.hidden_size, spec.head_dim, spec.intermediate_size, spec.vocab_size
    heads = head_split(spec, tp, tp_rank)
    first, last = pp_rank == 0, pp_rank == pp - 1
    kv_owner = tp_rank % heads.kv_replicas == 0
    out: list[ParamSlice] = []

    def add(
        name: str,
        shape: tuple[int, ...],
        dim: int | None,
        rng: tuple[int, int] = (0, 0),
        owner: bool = True,
        partial: bool = False,
        source: str | None = None,
    ) -> None:
        out.append(ParamSlice(name, source or name, shape, dim, rng[0], rng[1], owner, partial))

    def split(n: int) -> tuple[int, int]:
        return split_range(n, tp, tp_rank)

    replicated_owner = tp_rank == 0
    if first:
        add("model.embed_tokens.weight", (vocab, h), 0, split(vocab))
    for i in stage_layers(spec, pp, pp_rank):
        p = f"model.layers.{i}."
        add(p + "input_layernorm.weight", (h,), None, owner=replicated_owner)
        q0, q1 = heads.q_heads
        k0, k1 = heads.kv_heads
        nq, nkv = spec.num_attention_heads * hd, spec.num_key_value_heads * hd
        kv_kw = {"owner": kv_owner, "partial": heads.kv_replicas > 1}
        add(p + "self_attn.q_proj.weight", (nq, h), 0, (q0 * hd, q1 * hd))
        if spec.qkv_bias:  # column-parallel: a bias row goes with its weight row
            add(p + "self_attn.q_proj.bias", (nq,), 0, (q0 * hd, q1 * hd))
        for kv in ("k_proj", "v_proj"):
            add(p + f"self_attn.{kv}.weight", (nkv, h), 0, (k0 * hd, k1 * hd), **kv_kw)
            if spec.qkv_bias:
                add(p + f"self_attn.{kv}.bias", (nkv,), 0, (k0 * hd, k1 * hd), **kv_kw)
        add(p + "self_attn.o_proj.weight", (h, nq), 1, (q0 * hd, q1 * hd))
        if spec.o_bias:  # row-parallel: added once after the tp sum, so replicated
            add(p + "self_attn.o_proj.bias", (h,), None, owner=replicated_owner)
        if spec.qk_norm:
            # One [head_dim] weight shared by every head: replicated, and each rank's
            # gradient covers only its own heads, so it is summed over tp.
            for norm in ("q_norm", "k_norm"):
                add(
                    p + f"self_attn.{norm}.weight",
                    (hd,),
                    None,
                    owner=replicated_owner,
                    partial=tp > 1,
                )
        add(p + "post_attention_layernorm.weight", (h,), None, owner=replicated_owner)
        for proj in ("gate_proj", "up_proj"):
            add(p + f"mlp.{proj}.weight", (inter, h), 0, split(inter))
            if spec.mlp_bias:
                add(p + f"mlp.{proj}.bias", (inter,), 0, split(inter))
        add(p + "mlp.down_proj.weight", (h, inter), 1, split(inter))
        if spec.mlp_bias:
            add(p + "mlp.down_proj.bias", (h,), None, owner=replicated_owner)
    if last:
        add("model.norm.weight", (h,), None, owner=replicated_owner)
        if spec.head == "value":
            add("score.weight", (1, h), None, owner=replicated_owner)
        elif spec.tie_word_embeddings:
            # With pp=1 the head shares the embedding Parameter and is not listed again;
            # with pp>1 the last stage keeps its own copy, synced through the embed group.
            if not first:
                add(
                    "lm_head.weight",
                    (vocab, h),
                    0,
                    split(vocab),
                    owner=False,
                    source="model.embed_tokens.weight",
                )
        else:
            add("lm_head.weight", (vocab, h), 0, split(vocab))
    return out
