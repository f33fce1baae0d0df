"""One worker of `rlhf-run`: every rank walks the same calls in the same order.

Before a call, the ranks concerned reallocate the call's model into the call's layout and
fetch its input data; then the call's mesh runs it while the other ranks go on to their next
call, so calls on disjoint meshes overlap without a central controller.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from executor.checkpoint import save_checkpoint
from executor.data import load_prompts, reward_function, synthetic_prompts
from executor.runtime import checkpoints, ppo
from executor.runtime.launch import WorkerEnv
from executor.runtime.roles import build_contexts, build_roles, layout_key
from executor.runtime.store import DataStore
from executor.tokenizer import ByteTokenizer, left_pad
from executor.train import OptimConfig, make_optimizer
from plans import Plan, PlanError, load_plan
from plans.dataflow import unrolled
from plans.slicing import split_range

# MFC data keys (plans.algorithms) -> the tensors that carry them.
TENSORS = {
    "seq": ("input_ids", "attention_mask", "response_mask"),
    "logprobs": ("logprobs",),
    "ref_logprobs": ("ref_logprobs",),
    "rewards": ("score",),
    "values": ("values",),
}


@dataclass(frozen=True)
class RunTask:
    plan_path: str
    iterations: int
    out_dir: str
    data: str | None = None
    save_final: bool = False
    """Write every trained model to <out_dir>/final/<role> (HF folders) after the last iteration."""
    checkpoint_every: int = 0
    """Save a run checkpoint every N iterations (0: never)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in out_dir."""


class Prompts:
    """The prompts of iteration `it`: the same on every rank, from a JSONL file or the
    built-in synthetic task."""

    def __init__(self, plan: Plan, data: str | None, tok: ByteTokenizer):
        exp = plan.experiment
        self.exp, self.tok = exp, tok
        path = data or exp.dataset
        self.rows = load_prompts(path) if path else None

    def batch(self, it: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        n, p = self.exp.batch_size, self.exp.prompt_len
        if self.rows is None:
            texts = synthetic_prompts(n, seed=self.exp.seed * 100_003 + it)
        else:
            texts = [self.rows[(it * n + i) % len(self.rows)] for i in range(n)]
        ids = [self.tok.encode(t)[-p:] for t in texts]  # keep the end of a long prompt
        pad_ids, mask = left_pad(ids, self.tok.pad_token_id)
        if pad_ids.shape[1] < p:  # every batch has exactly prompt_len columns
            extra = p - pad_ids.shape[1]
            pad_ids = torch.cat([torch.full((n, extra), self.tok.pad_token_id), pad_ids], dim=1)
            mask = torch.cat([torch.zeros(n, extra, dtype=mask.dtype), mask], dim=1)
        return texts, pad_ids, mask


def run(env: WorkerEnv, task: RunTask) -> None:
    plan = load_plan(task.plan_path)
    exp, gpn = plan.experiment, plan.cluster.gpus_per_node
    ctxs = build_contexts(plan)
    roles = build_roles(plan, ctxs)
    opts = {}
    for role, rm in roles.items():
        if rm.model is not None and any(m.role == role and m.kind == "train" for m in exp.mfcs()):
            o = exp.optimizer(role)
            opts[role] = make_optimizer(
                rm.model,
                OptimConfig(
                    lr=o.lr,
                    betas=o.betas,
                    weight_decay=o.weight_decay,
                    eps=o.eps,
                ),  # clipping is train_step's argument (the role's grad_clip), not the optimizer's
                rm.home_ctx,
                zero1=rm.home.strategy.zero1,
            )
    tok = ByteTokenizer()
    prompts = Prompts(plan, task.data, tok)
    store = DataStore(gpn, ppo.schema(exp))
    rule = reward_function(exp.reward_function) if exp.reward_function else None
    # Outputs are pushed to every consumer right after they are produced, not fetched when the
    # consumer starts: a fetch would wait for the producer's ranks, which may by then be busy
    # with another call, and calls on disjoint meshes would no longer overlap.
    order = [node.mfc for node in unrolled(exp.algorithm, 1)]  # the global order of calls
    consumers = {
        m.name: [c.name for c in exp.mfcs() if set(m.outputs) & set(c.inputs)] for m in exp.mfcs()
    }
    n = exp.batch_size
    out_dir = Path(task.out_dir)
    if env.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    if task.resume:
        path = checkpoints.latest(out_dir, env.world)
        if path is None:
            raise PlanError(
                f"no complete checkpoint in {out_dir / 'checkpoints'}", field="--resume"
            )
        start = checkpoints.load(path, env.rank, plan, roles, opts)
        if env.rank == 0:
            _truncate_metrics(out_dir, start)
    for it in range(start, task.iterations):
        t_iter = time.perf_counter()
        texts, prompt_ids, prompt_mask = prompts.batch(it)
        mine: dict = {"calls": {}, "stats": {}}
        inbox: dict[str, dict[str, torch.Tensor]] = {m.name: {} for m in exp.mfcs()}
        for m in order:
            alloc = plan.allocations[m.name]
            ctx = ctxs[layout_key(alloc)]
            rm = roles[m.role]
            t0 = time.perf_counter()
            model = rm.view(alloc)
            t1 = time.perf_counter()
            data = inbox.pop(m.name)
            out = None
            if ctx.in_mesh:
                out = _run_call(
                    m,
                    model,
                    ctx,
                    exp,
                    data,
                    prompt_ids,
                    prompt_mask,
                    texts,
                    rule,
                    tok,
                    opts,
                    it,
                    alloc.strategy.micro_batches,
                    mine["stats"],
                )
            t2 = time.perf_counter()
            if m.outputs:
                store.put(
                    m.name, alloc, n, tuple(k for key in m.outputs for k in TENSORS[key]), out
                )
            if m.kind == "train":
                rm.drop_view()  # its other layouts hold the old weights now
            for c in consumers[m.name]:
                inbox[c].update(store.fetch(m.name, plan.allocations[c]))
            if ctx.in_mesh:
                mine["calls"][m.name] = {
                    "realloc_s": t1 - t0,
                    "compute_s": t2 - t1,
                    "data_s": time.perf_counter() - t2,  # pushing the outputs to their consumers
                }
        mine["iteration_s"] = time.perf_counter() - t_iter
        mine["peak_memory_mib"] = _peak_memory_mib(env.device)
        everyone: list = [None] * env.world
        dist.all_gather_object(everyone, mine)
        if env.rank == 0:
            _write_metrics(out_dir, plan, it, everyone)
        if task.checkpoint_every and (it + 1) % task.checkpoint_every == 0:
            checkpoints.save(out_dir, it + 1, env.rank, plan, roles, opts, tok)
    if task.save_final:
        for role in opts:
            rm = roles[role]
            save_checkpoint(
                rm.model,
                rm.home_ctx,
                out_dir / "final" / role,
                tok.pad_token_id,
                tok.bos_token_id,
                tok.eos_token_id,
            )


def _run_call(
    m, model, ctx, exp, data, prompt_ids, prompt_mask, texts, rule, tok, opts, it, n_micro, stats
):
    if m.name == "actor_gen":
        return ppo.actor_generate(
            model,
            ctx,
            exp,
            prompt_ids,
            prompt_mask,
            tok.eos_token_id,
            tok.pad_token_id,
            seed=exp.seed * 7919 + it,
        )
    if m.name == "ref_inf":
        return ppo.response_logprobs(model, ctx, exp, data, n_micro)
    if m.name == "critic_inf":
        return ppo.response_values(model, ctx, exp, data, n_micro)
    if m.name == "rew_inf":
        if rule is None:
            return ppo.last_token_score(model, ctx, data, n_micro)
        if not ctx.is_last_stage:
            return None
        lo, hi = split_range(exp.batch_size, ctx.dp_size, ctx.dp_rank)
        p = exp.prompt_len
        scores = []
        for i in range(lo, hi):
            resp = data["input_ids"][i, p:][data["response_mask"][i] > 0].tolist()
            scores.append(float(rule(texts[i], tok.decode(resp))))
        return {"score": torch.tensor(scores, dtype=torch.float32)}
    if m.kind == "train":
        adv = ppo.advantages(exp, data)
        grad_clip = exp.optimizer(m.role).grad_clip
        mask = data["response_mask"]
        if m.role == "actor":
            steps, clip_frac = ppo.train_actor(
                model, ctx, opts[m.role], exp, data, adv, n_micro, grad_clip
            )
            stats["rollout"] = {
                "reward_mean": float(data["score"].mean()),
                "kl_mean": float((adv.kl.sum(1) / mask.sum(1).clamp(min=1)).mean()),
                "response_len": float(mask.sum(1).mean()),
            }
            if ctx.is_last_stage:  # where the loss, hence the clipping, is computed
                stats["clip_frac"] = clip_frac
        else:
            steps = ppo.train_critic(model, ctx, opts[m.role], exp, data, adv, n_micro, grad_clip)
        stats[m.name] = {
            "loss": sum(s.loss for s in steps) / len(steps),
            "grad_norm": sum(s.grad_norm for s in steps) / len(steps),
        }
        return None
    raise NotImplementedError(f"rlhf-run does not run {m.name} yet")


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this worker: allocated device memory on a GPU, resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def _truncate_metrics(out_dir: Path, done: int) -> None:
    """Drop metric lines of iterations after the checkpoint: they will be run again."""
    path = out_dir / "metrics.jsonl"
    if path.exists():
        keep = [
            line
            for line in path.read_text().splitlines()
            if line and json.loads(line)["iteration"] < done
        ]
        path.write_text("".join(line + "\n" for line in keep))


def _write_metrics(out_dir: Path, plan: Plan, it: int, everyone: list) -> None:
    calls: dict[str, dict] = {}
    stats: dict = {}
    for r in everyone:
        stats.update(r["stats"])
        for name, t in r["calls"].items():
            c = calls.setdefault(name, {"realloc_s": 0.0, "data_s": 0.0, "compute_s": 0.0})
            for k in c:
                c[k] = max(c[k], t[k])  # a call takes as long as its slowest rank
    if plan.estimate:
        for name, c in calls.items():
            est = plan.estimate.calls.get(name)
            c["estimate_s"] = est.time_s if est else None
    row = {
        "iteration": it,
        "iteration_s": max(r["iteration_s"] for r in everyone),
        "realloc_s": sum(c["realloc_s"] for c in calls.values()),
        **stats.get("rollout", {}),
        "actor_loss": stats.get("actor_train", {}).get("loss"),
        "critic_loss": stats.get("critic_train", {}).get("loss"),
        "clip_frac": stats.get("clip_frac"),
        "peak_memory_mib": max(r["peak_memory_mib"] for r in everyone),
        "calls": calls,
    }
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        f"iter {it}: reward {row.get('reward_mean', float('nan')):.3f} kl {row.get('kl_mean', float('nan')):.4f} "
        f"time {row['iteration_s']:.2f}s realloc {row['realloc_s']:.3f}s",
        flush=True,
    )
