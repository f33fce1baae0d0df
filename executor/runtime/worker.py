"""One worker of `rlhf-run`: every rank walks the same calls in the same order.

Before a call, the ranks concerned reallocate the call's model into the call's layout and
wait for its input data; then the call's mesh runs it and posts its outputs to every consumer
without waiting, while the other ranks go on to their next call. So calls on disjoint meshes
overlap without a central controller, also across iterations: nothing (not even the metrics,
executor.runtime.metrics) ends an iteration with a barrier.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from executor.data import reward_function
from executor.realloc import Pending
from executor.runtime import checkpoints, metrics
from executor.runtime.algorithms import program_for
from executor.runtime.display import RunDisplay
from executor.runtime.evaluate import Evaluation
from executor.runtime.launch import WorkerEnv
from executor.runtime.metrics import MetricsBoard
from executor.runtime.program import CallEnv
from executor.runtime.roles import build_contexts, build_roles, layout_key
from executor.runtime.store import DataStore
from executor.tokenizer import tokenizer_for
from executor.train import OptimConfig, make_optimizer
from plans import PlanError, load_plan, save_plan
from plans.algorithms import DATASET_KEYS
from plans.dataflow import unrolled


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
    tok = tokenizer_for([exp.model(r) for r in exp.roles])
    program = program_for(exp, tok, task.data)
    store = DataStore(gpn, program.schema())
    rule = reward_function(exp.reward_function) if exp.reward_function else None
    # Outputs are pushed to every consumer right after they are produced, not fetched when the
    # consumer starts: a fetch would wait for the producer's ranks, which may by then be busy
    # with another call, and calls on disjoint meshes would no longer overlap.
    order = [node.mfc for node in unrolled(exp.algorithm, 1)]  # the global order of calls
    consumers = {
        m.name: [c.name for c in exp.mfcs() if set(m.outputs) & set(c.inputs)] for m in exp.mfcs()
    }
    n = program.rows()
    out_dir = Path(task.out_dir)
    if env.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_plan(plan, out_dir / "plan.json")  # what ran, next to its metrics
    start = 0
    if task.resume:
        path = checkpoints.latest(out_dir, env.world)
        if path is None:
            raise PlanError(
                f"no complete checkpoint in {out_dir / 'checkpoints'}", field="--resume"
            )
        start = checkpoints.load(path, env.rank, plan, roles, opts)
        if env.rank == 0:
            metrics.truncate(out_dir, start)
    evaluation, eval_alloc = None, None
    if exp.evaluation is not None:  # in the generation layout (the actor's home without one)
        evaluation = Evaluation(exp.evaluation, tok, exp.model("actor").max_position_embeddings)
        eval_alloc = plan.allocations.get("actor_gen", roles["actor"].home)
    display = RunDisplay(start, task.iterations) if env.rank == 0 else None
    board = MetricsBoard(env.store, env.rank, env.world, env.timeout)
    sent: list[tuple[int, Pending]] = []  # outputs handed over, by iteration
    try:
        for it in range(start, task.iterations):
            t_iter = time.time()
            dataset = program.dataset(it)
            mine: dict = {"calls": {}, "moves": {}, "stats": {}, "start": t_iter}
            inbox: dict[str, list] = {m.name: [] for m in exp.mfcs()}
            for m in order:
                alloc = plan.allocations[m.name]
                ctx = ctxs[layout_key(alloc)]
                rm = roles[m.role]
                model = rm.view(alloc)
                if rm.last_move is not None:
                    mine["moves"][m.name] = rm.last_move
                t1 = time.time()
                data: dict[str, torch.Tensor] = {}
                for part, pending in inbox.pop(m.name):
                    pending.wait()
                    data.update(part)
                for key in m.inputs:
                    if key in DATASET_KEYS:  # every rank has the dataset's whole batch
                        data.update({t: dataset[t] for t in program.tensors[key]})
                t2 = time.time()
                out = None
                if ctx.in_mesh:
                    call_env = CallEnv(
                        exp, tok, rule, it, alloc.strategy.micro_batches, opts.get(m.role)
                    )
                    out = program.run(m, model, ctx, data, call_env)
                    mine["stats"].update(call_env.stats)
                t3 = time.time()
                if m.outputs:
                    keys = tuple(t for key in m.outputs for t in program.tensors[key])
                    store.put(m.name, alloc, n, keys, out)
                if m.kind == "train":
                    rm.drop_view()  # its other layouts hold the old weights now
                for c in consumers[m.name]:  # posted here, waited for by the consumer
                    part, pending = store.post(m.name, plan.allocations[c])
                    inbox[c].append((part, pending))
                    sent.append((it, pending))
                if ctx.in_mesh:
                    mine["calls"][m.name] = {
                        "wait_s": t2 - t1,
                        "data_s": time.time() - t3,
                        "start": t2,
                        "end": t3,
                    }
            # Sends of the last iteration have long been received; waiting for them here
            # frees their buffers and keeps any rank at most one iteration ahead.
            while sent and sent[0][0] < it:
                sent.pop(0)[1].wait()
            mine["end"] = time.time()
            if evaluation is not None and evaluation.due(it, task.iterations):
                t0 = time.perf_counter()
                model = roles["actor"].view(eval_alloc)
                if ctxs[layout_key(eval_alloc)].in_mesh:
                    mine["stats"].update(evaluation.run(model, ctxs[layout_key(eval_alloc)]))
                    mine["stats"]["eval_s"] = time.perf_counter() - t0
            mine["peak_memory_mib"] = _peak_memory_mib(env.device)
            board.post(it, mine)
            if task.checkpoint_every and (it + 1) % task.checkpoint_every == 0:
                checkpoints.save(out_dir, it + 1, env.rank, plan, roles, opts, tok)
            last = it == task.iterations - 1
            if display is not None:
                for row in board.merged(plan, block=last):
                    metrics.append_row(out_dir, row)
                    display.update(row)
        for _, pending in sent:
            pending.wait()
    finally:
        if display is not None:
            display.close()
    if task.save_final:
        for role in opts:
            rm = roles[role]
            checkpoints.save_hf(rm, out_dir / "final" / role, tok)


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this worker: allocated device memory on a GPU, resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB
