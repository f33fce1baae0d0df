"""One worker of `rlhf-run`: every rank walks the same calls in the same order.

Each call is four steps on every rank (`Worker.call`): bring the call's model into the call's
layout (plans.residency says when that moves weights), wait for the call's inputs, run it on
its mesh, and post its outputs to every consumer without waiting. Ranks off the call's mesh
go straight on to their next call, so calls on disjoint meshes overlap without a central
controller, also across iterations: nothing (not even the metrics, executor.runtime.metrics)
ends an iteration with a barrier.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from executor.compute.schedule import scheduled
from executor.compute.train import NonFiniteError, OptimConfig, make_optimizer
from executor.data.batching import to_device
from executor.data.sources import reward_function
from executor.data.tokenizer import tokenizer_for
from executor.programs.evaluate import Evaluation
from executor.programs.program import CallEnv
from executor.programs.registry import program_for
from executor.realloc.move import Pending
from executor.runtime import checkpoints, metrics
from executor.runtime.display import RunDisplay
from executor.runtime.launch import RunError, WorkerEnv
from executor.runtime.metrics import MetricsBoard
from executor.runtime.roles import build_contexts, build_roles
from executor.runtime.staged import StagedViews
from executor.runtime.store import DataStore
from plans import MFC, PlanError, load_plan, save_plan
from plans.algorithms import DATASET_KEYS
from plans.dataflow import unrolled
from plans.residency import Residency, layout_key
from plans.staleness import (
    ASYNC_ALGORITHMS,
    refresh_call,
    stale_calls,
    version_lag,
)


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
    """Continue from the newest intact checkpoint in out_dir (or `resume_from`)."""
    resume_from: str | None = None
    """The checkpoint folder to continue from, as the launcher chose it."""


def run(env: WorkerEnv, task: RunTask) -> None:
    w = Worker(env, task)
    try:
        for it in range(w.start, task.iterations):
            w.iteration(it)
        w.drain()
    finally:
        w.close()
    if task.save_final:
        w.save_final()


@dataclass
class Iteration:
    """What one iteration on this rank leaves for the metrics (executor.runtime.metrics)."""

    start: float
    calls: dict = field(default_factory=dict)
    moves: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    inbox: dict[str, list] = field(default_factory=dict)
    """Call -> (data part, pending receive) posted to it by its producers."""

    def row(self, end: float, peak_memory_mib: float) -> dict:
        return {
            "calls": self.calls,
            "moves": self.moves,
            "stats": self.stats,
            "start": self.start,
            "end": end,
            "peak_memory_mib": peak_memory_mib,
        }


class Worker:
    """This rank's part of a run: the plan's models, the algorithm's program, the data store."""

    def __init__(self, env: WorkerEnv, task: RunTask):
        self.env, self.task = env, task
        self.plan = plan = load_plan(task.plan_path)
        exp = self.exp = plan.experiment
        self.k = k = plan.max_staleness
        self.rules = Residency.of(exp, plan.allocations, k)
        self.ctxs = build_contexts(plan)
        # The one place the device is chosen (executor.runtime.launch); models, batches, KV
        # caches, pipeline buffers and every move follow it from here.
        self.roles = build_roles(plan, self.ctxs, self.rules, env.device)
        self.opts = self._optimizers()
        self.tok = tokenizer_for([exp.model(r) for r in exp.roles], exp.tokenizer)
        self.program = program_for(exp, self.tok, task.data)
        self.store = DataStore(plan.cluster.gpus_per_node, self.program.schema(), env.device)
        self.rule = reward_function(exp.reward_function) if exp.reward_function else None
        self.order = [node.mfc for node in unrolled(exp.mfcs(), 1)]  # the global order
        self.out_dir = Path(task.out_dir)
        keeps = task.resume or task.checkpoint_every  # what checkpoints record: the data
        self.data = checkpoints.data_source(self.program.data_path) if keeps else {}
        # Generate calls that sample with older weights, from views staged before the
        # actor's train calls (plans.staleness); none with k = 0.
        self.staged = {
            name: StagedViews(self.roles[plan.mfc(name).role], plan.allocations[name], k)
            for name in stale_calls(exp.mfcs(), k)
        }
        self.refresh = refresh_call(exp.mfcs(), k)
        self.start = self._resume() if task.resume else 0  # before anything is written
        if env.rank == 0:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                save_plan(plan, self.out_dir / "plan.json")  # what ran, next to its metrics
            except OSError as e:
                raise RunError(f"cannot write {self.out_dir / 'plan.json'}: {e.strerror}") from None
        self.evaluation, self.eval_alloc = None, None
        if exp.evaluation is not None:  # in the generation layout (the actor's home without one)
            max_pos = exp.model("actor").max_position_embeddings
            self.evaluation = Evaluation(exp.evaluation, self.tok, max_pos)
            self.eval_alloc = plan.allocations.get("actor_gen", self.roles["actor"].home)
        self.display = RunDisplay(self.start, task.iterations) if env.rank == 0 else None
        self.board = MetricsBoard(env.store, env.rank, env.world, env.timeout)
        self.sent: list[tuple[int, Pending]] = []  # outputs handed over, by iteration

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizer of every role this rank trains (home shards only)."""
        opts = {}
        for role, rm in self.roles.items():
            if rm.model is None or not any(
                m.role == role and m.kind == "train" for m in self.exp.mfcs()
            ):
                continue
            o = self.exp.optimizer(role)
            # Clipping is train_step's argument (the role's grad_clip), not the optimizer's.
            cfg = OptimConfig(lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
            opt = make_optimizer(rm.model, cfg, rm.home_ctx, zero1=rm.home.strategy.zero1)
            opts[role] = scheduled(opt, o)  # the schedule's position is in opt's state_dict
        return opts

    def _resume(self) -> int:
        if self.task.resume_from is not None:
            path = Path(self.task.resume_from)
        else:
            path = checkpoints.latest(self.out_dir, self.env.world)
        if path is None:
            where = self.out_dir / "checkpoints"
            raise PlanError(f"no complete checkpoint in {where}", field="--resume")
        field = "--data" if self.task.data else "experiment.dataset"
        checkpoints.check_resume(path, self.plan, self.data, field)
        done = checkpoints.load(path, self.env.rank, self.plan, self.roles, self.opts, self.staged)
        if self.env.rank == 0:
            metrics.truncate(self.out_dir, done)
        return done

    # ---- one iteration ----------------------------------------------------------------------
    def iteration(self, it: int) -> None:
        rec = Iteration(time.time(), inbox={m.name: [] for m in self.exp.mfcs()})
        if self.exp.algorithm in ASYNC_ALGORITHMS and self.env.rank == 0:
            rec.stats["version_lag"] = version_lag(it, self.k)
        dataset = to_device(self.program.dataset(it), self.env.device)
        for m in self.order:
            self.call(m, it, dataset, rec)
        # Sends of the last iteration have long been received; waiting for them here frees
        # their buffers and keeps any rank at most one iteration ahead.
        while self.sent and self.sent[0][0] < it:
            self.sent.pop(0)[1].wait()
        end = time.time()
        self._evaluate(it, rec)
        self.board.post(it, rec.row(end, _peak_memory_mib(self.env.device)))
        every = self.task.checkpoint_every
        save = bool(every and (it + 1) % every == 0)
        if self.display is not None:
            # Before a checkpoint, every row up to it is on disk (waiting here costs nothing:
            # the save starts with a barrier), so a resume from it has all earlier rows.
            last = it == self.task.iterations - 1
            for row in self.board.merged(self.plan, block=save or last):
                metrics.append_row(self.out_dir, row)
                self.display.update(row)
        if save:
            checkpoints.save(
                self.out_dir,
                it + 1,
                self.env.rank,
                self.plan,
                self.roles,
                self.opts,
                self.tok,
                self.data,
                self.staged,
            )

    def call(self, m: MFC, it: int, dataset: dict, rec: Iteration) -> None:
        """The four steps of one call on this rank (most do nothing off the call's mesh)."""
        alloc = self.plan.allocations[m.name]
        ctx = self.ctxs[layout_key(alloc)]
        model = self._model_for(m, it, rec)
        t1 = time.time()
        data = self._inputs(m, dataset, rec)
        t2 = time.time()
        out = None
        if ctx.in_mesh:
            if model is not None:  # (a rule reward has no model)
                model.recompute = m.kind == "train" and alloc.strategy.recompute
            env = CallEnv(
                self.exp,
                self.tok,
                self.rule,
                it,
                alloc.strategy.micro_batches,
                self.opts.get(m.role),
                staleness=self.k,
            )
            if m.kind == "train":  # the schedule's rate of this call's first optimizer step
                rec.stats[f"{m.role}_lr"] = float(env.opt.param_groups[0]["lr"])
            try:
                out = self.program.run(m, model, ctx, data, env)
            except NonFiniteError as e:  # the weights keep their last finite values
                last = checkpoints.latest(self.out_dir, self.env.world)
                kept = f"last checkpoint: {last}" if last else "no checkpoint"
                raise RunError(f"{m.name} at iteration {it}: {e}; stopped ({kept})") from None
            rec.stats.update(env.stats)
        t3 = time.time()
        self._hand_over(m, it, out, rec)
        if m.name in self.staged:
            self.staged[m.name].after_generate(it)
        if ctx.in_mesh:
            rec.calls[m.name] = {
                "wait_s": t2 - t1,
                "data_s": time.time() - t3,
                "start": t2,
                "end": t3,
            }

    def _model_for(self, m: MFC, it: int, rec: Iteration):
        """Step 1: the role's model in the call's layout (a move where the view is not held);
        under staleness, a staged view for generation, and a new one before the train call."""
        if m.name in self.staged:
            sv = self.staged[m.name]
            model = sv.for_generate(it)
            if sv.last_move is not None:
                rec.moves[m.name] = sv.last_move
            return model
        if m.name == self.refresh:
            for sv in self.staged.values():
                sv.before_train(it)
                if sv.last_move is not None:
                    rec.moves[m.name] = sv.last_move
        rm = self.roles[m.role]
        model = rm.view(self.plan.allocations[m.name])
        if rm.last_move is not None:
            rec.moves[m.name] = rm.last_move
        return model

    def _inputs(self, m: MFC, dataset: dict, rec: Iteration) -> dict[str, torch.Tensor]:
        """Step 2: the call's data: what its producers posted to it, and the dataset's rows
        (every rank has the dataset's whole batch)."""
        data: dict[str, torch.Tensor] = {}
        for part, pending in rec.inbox.pop(m.name):
            pending.wait()
            data.update(part)
        for key in m.inputs:
            if key in DATASET_KEYS:
                data.update({t: dataset[t] for t in self.program.tensors[key]})
        return data

    def _hand_over(self, m: MFC, it: int, out, rec: Iteration) -> None:
        """Step 4: post the outputs to every consumer, not waiting. A fetch by the consumer
        would wait for this call's ranks, which may by then be busy with another call, and
        calls on disjoint meshes would no longer overlap."""
        alloc = self.plan.allocations[m.name]
        if m.outputs:
            keys = tuple(t for key in m.outputs for t in self.program.tensors[key])
            self.store.put(m.name, alloc, self.program.rows(), keys, out)
        if m.kind == "train":
            self.roles[m.role].drop_view()  # its other layouts hold the old weights now
        for c in self.rules.consumers[m.name]:
            part, pending = self.store.post(m.name, self.plan.allocations[c])
            rec.inbox[c].append((part, pending))
            self.sent.append((it, pending))

    def _evaluate(self, it: int, rec: Iteration) -> None:
        if self.evaluation is None or not self.evaluation.due(it, self.task.iterations):
            return
        t0 = time.perf_counter()
        model = self.roles["actor"].view(self.eval_alloc)
        ctx = self.ctxs[layout_key(self.eval_alloc)]
        if ctx.in_mesh:
            rec.stats.update(self.evaluation.run(model, ctx))
            rec.stats["eval_s"] = time.perf_counter() - t0

    # ---- the end ------------------------------------------------------------------------------
    def drain(self) -> None:
        for _, pending in self.sent:
            pending.wait()

    def close(self) -> None:
        if self.display is not None:
            self.display.close()

    def save_final(self) -> None:
        for role in self.opts:
            checkpoints.save_hf(self.roles[role], self.out_dir / "final" / role, self.tok)


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this worker: allocated device memory on a GPU, resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB
