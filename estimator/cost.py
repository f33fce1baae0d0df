"""Time and memory of one model function call under one allocation, and of moving things.

`CostModel(cluster, experiment, profile)` answers, with per-(call, allocation) caching:
- `call_cost(mfc, alloc)` -> CallCost: seconds, a breakdown, memory on the busiest device and
  whether the call fits alone (the plan-level check adds the other models resident there);
- `realloc_cost(role, src, dst)` and `data_cost(keys, n, src, dst)` -> Transfer.

Time of a call (see DESIGN.md "Estimator"): pipeline of m micro-batches over pp stages takes
(m + pp - 1) stage-times, so the bubble is (pp-1)/(m+pp-1); a stage-time is its layers' compute
from the profile plus 2 TP all-reduces per layer forward (2 more backward) plus the activation
send to the next stage. Train calls add, per optimizer step, the DP gradient all-reduce through
a flat buffer (plus one all-gather per parameter with ZeRO-1) and the AdamW update. Generation, as
executor.compute.generate runs it, is a prefill followed by one decode step per new token, each reading
the weights and the KV cache, the rank's whole batch at once through the stages in turn.
Each micro-batch pass also pays what the executor's own code around the ops costs (inputs,
masks, the loss or log-prob gather), where the profile timed whole passes, and a checkpointed
block is priced by its own timing where the profile has one (estimator.profile's ops).
A collective is priced with the compute its ranks did since the previous one (profiles timed
in context record how much waiting that adds). A calibrated profile (`--from-run`) scales the
op-timing parts per call kind and adds a fixed overhead per pass; a rule reward is priced per
scored sequence. With the experiment's [packing], train and inference calls are priced by the
tokens present: each micro-batch at the packed shape plans.packing expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from estimator.contention import contention_factor
from estimator.lookup import ProfileLookup
from estimator.memory import GRAD_BYTES, CallMemory, call_memory, split_layers, stage_params
from estimator.overhead import pass_overhead, token_overhead
from estimator.profile import Profile, analytic_profile
from estimator.shapes import DTYPE_BYTES, shard_shape
from estimator.transfer import Transfer, data_transfer, realloc_transfer
from plans import MFC, Allocation, ClusterSpec, ExperimentSpec
from plans.algorithms import mfc_by_name
from plans.packing import expected_shape, sequence_tokens
from plans.residency import rule_call

DECODE_SAMPLES = 32  # decode steps evaluated exactly up to this many; sampled evenly beyond
# A rule reward (experiment.reward_function) scores decoded text in Python on the reward call's
# last-stage ranks: about 30 us per sequence for builtin:digits on the development CPU (1 ms
# for 32 sequences in rlhf-run), unless a calibrated profile measured it.
RULE_REWARD_S_PER_SEQ = 3e-5
# Parts of a call's time that come from op timings (a calibration scales them); the others
# (tp_comm, pp_comm, dp_sync) come from collective timings and are left as they are.
COMPUTE_PARTS = ("compute", "prefill", "bubble", "optimizer")


@dataclass(frozen=True, slots=True)
class CallCost:
    """The cost model's answer for one call under one allocation."""

    time_s: float
    memory: CallMemory
    feasible: bool
    reason: str
    breakdown: dict[str, float] = field(default_factory=dict)
    """Seconds by component: compute, tp_comm, pp_comm, bubble, dp_sync, optimizer (and
    overhead with a calibrated profile; rule for a rule reward)."""
    passes: int = 0
    """Passes of the call on one rank: micro-batch forward(+backward) passes, or for
    generation decoded token rounds; what a calibration's per-pass overhead multiplies."""
    compute_s: float = 0.0
    """Seconds from op timings before any calibration (what contention stretches)."""


def scopes(alloc: Allocation, gpus_per_node: int) -> tuple[str, str, str]:
    """Link scope ('intra'/'inter') of the tp group, the dp group and a pipeline boundary."""
    grid = alloc.rank_grid(gpus_per_node)

    def span(ranks: list[int]) -> str:
        return "inter" if len({r // gpus_per_node for r in ranks}) > 1 else "intra"

    tp = span(grid[0][0])
    dp = span([row[0] for row in grid[0]])
    pp = "intra"
    if len(grid) > 1:
        pp = max(
            (span([grid[p][0][0], grid[p + 1][0][0]]) for p in range(len(grid) - 1)),
            key=lambda s: s == "inter",
        )
    return tp, dp, pp


class CostModel:
    """Cached cost queries for one (cluster, experiment, profile)."""

    def __init__(
        self, cluster: ClusterSpec, experiment: ExperimentSpec, profile: Profile | None = None
    ):
        self.cluster = cluster
        self.experiment = experiment
        self.profile = profile or analytic_profile(cluster)
        eff = self.profile.efficiency.link
        self.lookup = ProfileLookup(
            self.profile,
            intra_bw=float(cluster.intra_node_gbps) * 1e9 * eff,
            inter_bw=float(cluster.inter_node_gbps) * 1e9 * eff,
        )
        self.mfcs = mfc_by_name(experiment.mfcs())
        self.dt = DTYPE_BYTES[experiment.dtype]
        self.memory_bytes = cluster.memory_bytes
        self._calls: dict[tuple[str, Allocation], CallCost] = {}
        self._by_id: dict[tuple[str, int], tuple[Allocation, CallCost]] = {}
        self._moves: dict[tuple, Transfer] = {}
        self._kappa: dict[str, float] = {}

    @property
    def profile_label(self) -> str:
        return self.profile.label

    def contention(self, mfc: MFC | str) -> float:
        """Extra share of the call's compute seconds while its node's other devices compute
        (estimator.contention; 0 for a rule reward, which runs no model)."""
        m = self.mfcs[mfc] if isinstance(mfc, str) else mfc
        k = self._kappa.get(m.name)
        if k is None:
            k = 0.0
            if not self.rule_reward(m):
                params = self.experiment.model(m.role).num_params()
                k = contention_factor(self.profile, m.kind, params)
            self._kappa[m.name] = k
        return k

    # ---- calls ---------------------------------------------------------------------------
    def call_cost(self, mfc: MFC | str, alloc: Allocation) -> CallCost:
        name = mfc if isinstance(mfc, str) else mfc.name
        hit = self._by_id.get((name, id(alloc)))  # the search reuses candidate objects
        if hit is not None and hit[0] is alloc:
            return hit[1]
        cost = self._calls.get((name, alloc))
        if cost is None:
            cost = self._calls[(name, alloc)] = self._compute(self.mfcs[name], alloc)
        self._by_id[(name, id(alloc))] = (alloc, cost)
        return cost

    def proximal_cost(self, train: str, alloc: Allocation) -> CallCost:
        """The forward pass a train call runs first under staleness (plans.staleness): its
        role's log-probs of the whole batch before any update, which the decoupled policy loss
        needs; priced as an inference call of that role in the train call's layout."""
        m = self.mfcs[train]
        name = f"{train}:proximal"
        cost = self._calls.get((name, alloc))
        if cost is None:
            probe = MFC(name=name, role=m.role, kind="inference", inputs=m.inputs)
            cost = self._calls[(name, alloc)] = self._compute(probe, alloc)
        return cost

    def time(self, mfc: MFC | str, alloc: Allocation) -> float:
        return self.call_cost(mfc, alloc).time_s

    def peak_memory(self, mfc: MFC | str, alloc: Allocation) -> float:
        """Bytes on the busiest device when only this call's model is placed there."""
        return self.call_cost(mfc, alloc).memory.total

    def feasible(self, mfc: MFC | str, alloc: Allocation) -> tuple[bool, str]:
        c = self.call_cost(mfc, alloc)
        return c.feasible, c.reason

    def rule_reward(self, mfc: MFC) -> bool:
        """Whether the call is a reward call that a rule reward replaces (rlhf-run then scores
        decoded text in Python instead of running the reward model)."""
        return rule_call(self.experiment, mfc)

    def _compute(self, mfc: MFC, alloc: Allocation) -> CallCost:
        if self.rule_reward(mfc):  # rlhf-run does not even load the reward model
            t, parts = self._rule(mfc, alloc)
            return CallCost(t, CallMemory(0.0, 0.0, 0.0, 0.0, 0.0), True, "", parts)
        mem = call_memory(mfc, alloc, self.experiment)
        ok = mem.total <= self.memory_bytes
        reason = "" if ok else self.memory_reason(mfc.name, mem.total, mem.breakdown())
        if mfc.kind == "generate":
            parts, passes = self._generate(mfc, alloc)
        else:
            parts, passes = self._forward_or_train(mfc, alloc)
        base = sum(v for k, v in parts.items() if k in COMPUTE_PARTS)
        cal = self.profile.calibration
        if cal is not None:
            factors = cal.kinds.get(mfc.kind)
            for k in parts:
                if k in COMPUTE_PARTS:
                    parts[k] *= factors.scale if factors else 1.0
                else:
                    parts[k] *= cal.comm_scale
            if factors is not None:
                parts["overhead"] = factors.overhead_s * passes
        return CallCost(sum(parts.values()), mem, ok, reason, parts, passes, base)

    def _rule(self, mfc: MFC, alloc: Allocation) -> tuple[float, dict[str, float]]:
        """A rule reward: every last-stage rank scores its dp share of the sequences."""
        cal = self.profile.calibration
        per_seq = RULE_REWARD_S_PER_SEQ
        if cal is not None and cal.rule_reward_s_per_seq is not None:
            per_seq = cal.rule_reward_s_per_seq
        t = math.ceil(self.experiment.sequences(mfc) / alloc.strategy.dp) * per_seq
        return t, {"rule": t}

    def memory_reason(self, name: str, total: float, parts: dict[str, float]) -> str:
        detail = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in parts.items() if v > 0)
        return (
            f"{name}: needs {total / 2**30:.1f} GiB per device ({detail}) but a "
            f"{self.cluster.device} has {self.memory_bytes / 2**30:.1f} GiB"
        )

    def _stage_ops(self, model, s, ops: tuple[str, str, str], batch, seq, head_seq):
        """Compute seconds of the slowest pipeline stage for one micro-batch.

        `ops` names the (block, embedding, head) ops; the head sees `head_seq` tokens per
        sequence (all of them in training and scoring, the last one in generation)."""
        shape = shard_shape(model, s.tp, self.dt)
        lk = self.lookup
        blk = lk.op_time(ops[0], shape, batch, seq)
        emb_seq = 1 if ops[0] == "decode" else seq
        emb = lk.op_time(ops[1], shape, batch, emb_seq)
        head = lk.op_time(ops[2], shape, batch, head_seq)
        layers = split_layers(model.num_hidden_layers, s.pp)
        return max(
            n * blk + (emb if p == 0 else 0.0) + (head if p == s.pp - 1 else 0.0)
            for p, n in enumerate(layers)
        )

    def _comm(
        self, model, alloc, tokens: float, passes: int, after_s: float = 0.0, sends: int = 0
    ) -> tuple[float, float]:
        """(TP all-reduce seconds, PP send seconds) of one micro-batch on one stage: two
        all-reduces per block and pass, `sends` stage-to-stage sends (default: one per pass);
        `after_s`: compute between two of the all-reduces (a half block's share)."""
        s = alloc.strategy
        tp_scope, _, pp_scope = scopes(alloc, self.cluster.gpus_per_node)
        msg = tokens * model.hidden_size * self.dt
        layers = max(split_layers(model.num_hidden_layers, s.pp))
        ar = self.lookup.collective_time("all_reduce", s.tp, tp_scope, msg, after_s)
        tp = 2 * passes * layers * ar
        sends = sends or passes
        pp = sends * self.lookup.collective_time("send_recv", 2, pp_scope, msg) if s.pp > 1 else 0
        return tp, pp

    def _forward_or_train(self, mfc: MFC, alloc: Allocation) -> tuple[dict[str, float], int]:
        exp, s = self.experiment, alloc.strategy
        model = exp.model(mfc.role)
        train = mfc.kind == "train"
        micro = math.ceil(math.ceil(exp.sequences_per_step(mfc) / s.dp) / s.micro_batches)
        seq = exp.seq_len
        if exp.packing is not None:  # the tokens present, in packed rows (plans.packing)
            micro, seq = expected_shape(micro, sequence_tokens(exp), seq)
        ops = ("block_fwd_bwd", "embedding_fwd_bwd", "head_fwd_bwd") if train else None
        ops = ops or ("block_fwd", "embedding_fwd", "head_fwd")
        recompute = train and s.recompute
        timed_rc = recompute and self.lookup.measured("block_recompute")
        if timed_rc:  # checkpointed blocks as torch runs them (the extra forward included)
            ops = ("block_recompute", *ops[1:])
        stage = self._stage_ops(model, s, ops, micro, seq, seq)
        stage += pass_overhead(self.lookup, model, self.dt, train, micro, seq)
        sends = passes = 2 if train else 1
        layers = max(split_layers(model.num_hidden_layers, s.pp))
        if recompute:  # every block's forward once more, all-reduces included, but nothing
            passes = 3  # sent between stages
        if recompute and not timed_rc:
            shape = shard_shape(model, s.tp, self.dt)
            stage += layers * self.lookup.op_time("block_fwd", shape, micro, seq)
        after = stage / (2 * passes * layers)
        tp, pp = self._comm(model, alloc, micro * seq, passes, after, sends)
        per_micro = stage + tp + pp
        steps = exp.ppo_epochs * exp.mini_batches if train else 1
        out = {
            "compute": steps * s.micro_batches * stage,
            "tp_comm": steps * s.micro_batches * tp,
            "pp_comm": steps * s.micro_batches * pp,
            "bubble": steps * (s.pp - 1) * per_micro,
        }
        n_passes = steps * s.micro_batches
        if train:
            out["dp_sync"] = steps * self._dp_sync(model, alloc, s.micro_batches * stage)
            params = max(stage_params(model, s.tp, s.pp)) / (s.dp if s.zero1 else 1)
            # 9 tensors per block (7 projections, 2 norms) + embedding, final norm, head.
            tensors = 9 * max(split_layers(model.num_hidden_layers, s.pp)) + 3
            out["optimizer"] = steps * self.lookup.op_time(
                "optimizer", shard_shape(model, 1, self.dt), params, tensors
            )
        return out, n_passes

    def _dp_sync(self, model, alloc: Allocation, after_s: float) -> float:
        """As executor.parallel.grads and executor.parallel.zero do it: the gradients are views
        of one flat fp32 buffer kept across steps, all-reduced over dp in place; with ZeRO-1
        each rank then updates its share and every parameter tensor is all-gathered back in
        the weights' dtype (one call each)."""
        s = alloc.strategy
        if s.dp == 1:
            return 0.0
        _, dp_scope, _ = scopes(alloc, self.cluster.gpus_per_node)
        params = max(stage_params(model, s.tp, s.pp))
        lk = self.lookup
        t = lk.collective_time("all_reduce", s.dp, dp_scope, params * GRAD_BYTES, after_s)
        if s.zero1:
            tensors = 9 * max(split_layers(model.num_hidden_layers, s.pp)) + 3
            weight_bytes = params * self.dt
            gather = lk.collective_time("all_gather", s.dp, dp_scope, weight_bytes / tensors)
            t += tensors * gather + 2 * weight_bytes / lk.mem_bw
        return t

    def _generate(self, mfc: MFC, alloc: Allocation) -> tuple[dict[str, float], int]:
        """As executor.compute.generate runs: each dp rank decodes its whole share at once (micro-
        batches do not apply), one token at a time through the pipeline stages in turn (no
        overlap between stages); the last stage gathers the vocab-parallel logits over tp,
        samples, and broadcasts the tokens back over the pipeline. A tree (plans.tree) prefills
        its prompts once and decodes token t with `rows_at(t)` open branches per prompt."""
        exp, s = self.experiment, alloc.strategy
        model = exp.model(mfc.role)
        tree = exp.tree
        b = math.ceil(exp.sequences(mfc) / s.dp)
        if tree is not None:
            b = math.ceil(exp.batch_size / s.dp)  # prompts; rows grow at each split

        def rows(t: int) -> int:
            return b if tree is None else b * tree.rows_at(t)

        p_len, n_layers, h = exp.prompt_len, model.num_hidden_layers, model.hidden_size
        lk = self.lookup
        tp_scope, _, pp_scope = scopes(alloc, self.cluster.gpus_per_node)
        shape = shard_shape(model, s.tp, self.dt)
        full = shard_shape(model, 1, self.dt)

        def tp_comm(tokens: float, blk: float, n: int) -> float:
            ar = lk.collective_time("all_reduce", s.tp, tp_scope, tokens * h * self.dt, blk / 2)
            gather = lk.collective_time("all_gather", s.tp, tp_scope, n * model.vocab_size * 4)
            return 2 * n_layers * ar + gather

        def pp_comm(tokens: float, n: int) -> float:
            if s.pp == 1:
                return 0.0
            send = lk.collective_time("send_recv", 2, pp_scope, tokens * h * self.dt)
            return (s.pp - 1) * send + lk.collective_time("broadcast", s.pp, pp_scope, 16 * n)

        # Prefill: the prompts through every stage in turn (head on the last position only),
        # then the first token is sampled.
        blk = lk.op_time("block_fwd", shape, b, p_len)
        prefill = n_layers * blk + lk.op_time("embedding_fwd", shape, b, p_len)
        prefill += lk.op_time("head_fwd", shape, b, 1) + lk.op_time("sample", full, b, 1)
        pre_tp, pre_pp = tp_comm(b * p_len, blk, b), pp_comm(b * p_len, b)
        # Decode: gen_len - 1 steps; step k feeds token k with a cache of p_len + k positions.
        steps = exp.gen_len - 1
        if steps <= DECODE_SAMPLES:
            ks = [float(k) for k in range(steps)]
        else:
            ks = [(k + 0.5) * steps / DECODE_SAMPLES for k in range(DECODE_SAMPLES)]
        scale = steps / len(ks) if ks else 0.0
        compute = tp_total = pp_total = 0.0
        for k in ks:
            n, c = rows(int(k)), p_len + k
            blk = lk.op_time("decode", shape, n, c)
            extra = token_overhead(lk, self.profile.decode_stack_bytes, full, n, c)
            compute += n_layers * blk + extra
            tp_total += tp_comm(n, blk, n)
            pp_total += pp_comm(n, n)
        return {
            "prefill": prefill,
            "compute": scale * compute,
            "tp_comm": pre_tp + scale * tp_total,
            "pp_comm": pre_pp + scale * pp_total,
        }, exp.gen_len

    # ---- moving parameters and data ------------------------------------------------------
    def realloc_cost(
        self, role: str, src: Allocation, dst: Allocation, hosting: bool = True
    ) -> Transfer:
        """Moving a role's parameters from the layout of `src` (its home) to that of `dst`.
        `hosting`: the home's rows live inside the copy where they fit (the role is in
        plans.residency.Residency.hosting)."""
        # Only the layouts and hosting matter (not micro-batches or ZeRO-1): key on them, so
        # the search's many allocations that differ only elsewhere share one priced move.
        ss, ds = src.strategy, dst.strategy
        key = ("p", role, src.mesh, ss.dp, ss.tp, ss.pp, dst.mesh, ds.dp, ds.tp, ds.pp, hosting)
        t = self._moves.get(key)
        if t is None:
            model = self.experiment.model(role)
            t = self._moves[key] = realloc_transfer(
                model, self.dt, src, dst, self.cluster.gpus_per_node, self.lookup, hosting
            )
        return t

    def data_cost(self, keys: tuple[str, ...], mfc: str, src: Allocation, dst: Allocation):
        """Moving the data keys `keys` a call `mfc` consumes from the producer's mesh to its own."""
        ss = src.strategy  # the producer's layout and the consumer's mesh decide the move
        key = ("d", keys, mfc, src.mesh, ss.dp, ss.tp, ss.pp, dst.mesh)
        t = self._moves.get(key)
        if t is None:
            t = self._moves[key] = data_transfer(
                keys, self.experiment, self.mfcs[mfc], src, dst, self.cluster, self.lookup
            )
        return t
