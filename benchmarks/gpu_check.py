"""The figures of `scripts/gpu_check.sh`, one subcommand each (every one also runs on a CPU,
which is how tests/unit/test_gpu_check.py keeps them alive):

    experiments OUT        GRPO and PPO experiments for a random Qwen2.5-0.5B-shaped model
    report RUN             a finished rlhf-run folder: train-call MFU, decode tokens/s and its
                           share of the memory-bandwidth limit, per-call estimate against
                           measured, peak memory against plan memory
    decode                 decode tokens/s of the executor's generation on one device, and its
                           share of the memory-bandwidth limit (prefill timed apart)
    precision              bf16 against fp32 loss over a few train steps from the same weights

    python benchmarks/gpu_check.py decode --device cuda --model qwen2.5-0.5b
    python benchmarks/gpu_check.py report runs/gpu-check/grpo-1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from plans import DEVICES, ExperimentSpec, ModelSpec, Plan, experiment_from_dict, load_experiment
from plans.metrics import MetricsRow

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


# ---- figures (pure: numbers in, numbers out) ---------------------------------------------------
def train_mfu(spec: ModelSpec, rows: int, seq_len: int, passes: int, seconds: float,
              devices: int, peak_flops: float) -> float:  # fmt: skip
    """Model FLOPs utilisation of a train call: forward + backward FLOPs of `passes` passes
    over `rows` sequences (recomputed forwards are not counted: model FLOPs), over the
    devices' peak for the call's time."""
    return passes * spec.train_flops(rows, seq_len) / (seconds * devices * peak_flops)


def decode_bound_s(spec: ModelSpec, dtype_bytes: int, rows_per_replica: int, prompt_len: int,
                   steps: int, tp: int, hbm_bytes_per_s: float) -> float:  # fmt: skip
    """The least time `steps` decode steps of one replica take when every step reads the
    weights (a 1/tp share on each of its devices; pipeline stages run one after the other, so
    the whole model's share counts) and the KV cache once at the memory bandwidth."""
    weights = spec.num_params() * dtype_bytes / tp
    kv_per_position = 2 * spec.num_hidden_layers * spec.num_key_value_heads * spec.head_dim
    kv_per_position *= dtype_bytes * rows_per_replica / tp
    # Step t reads prompt_len + t cached positions (the last one being written).
    kv = kv_per_position * (steps * prompt_len + steps * (steps + 1) / 2)
    return (steps * weights + kv) / hbm_bytes_per_s


def _train_rows(exp: ExperimentSpec) -> int:
    return exp.batch_size * (exp.group_size if exp.algorithm == "grpo" else 1)


def run_report(run: Path, plan: Plan, skip: int = 1) -> list[str]:
    """The lines `report` prints for a run folder (metrics.jsonl) and the plan it ran."""
    rows = [MetricsRow.model_validate_json(x) for x in (run / "metrics.jsonl").open()]
    rows = rows[skip:] or rows  # the first iteration warms kernels and allocators up
    exp, cluster = plan.experiment, plan.cluster
    peak = cluster.peak_tflops * 1e12
    hbm = cluster.hbm_gbps * 1e9
    dt = DTYPE_BYTES[exp.dtype]
    est = plan.estimate.calls if plan.estimate else {}
    out = [f"{run}: {len(rows)} iterations measured, {cluster.label()}"]
    for m in exp.mfcs():
        alloc = plan.allocations[m.name]
        s = alloc.strategy
        took = sorted(r.calls[m.name].compute_s for r in rows if m.name in r.calls)
        if not took:
            continue
        t = took[len(took) // 2]  # the median call
        spec = exp.model(m.role)
        line = f"{m.name:<13} {alloc.label():<22} measured {t:8.3f} s"
        e = est.get(m.name)
        if e is not None:
            line += f"  estimate {e.time_s:8.3f} s ({(e.time_s - t) / t:+.0%})"
        if m.kind == "train":
            mfu = train_mfu(spec, _train_rows(exp), exp.seq_len, exp.ppo_epochs, t, s.world, peak)
            line += f"  MFU {mfu:.1%}"
        if m.kind == "generate":
            n = _train_rows(exp)
            resp = [r.stat("response_len") for r in rows]
            steps = exp.gen_len
            bound = decode_bound_s(spec, dt, -(-n // s.dp), exp.prompt_len, steps, s.tp, hbm)
            line += (
                f"  decode {n * steps / t:,.0f} tokens/s ({steps} steps, prefill included; "
                f"mean response {sum(x or 0 for x in resp) / len(resp):.0f}), "
                f"{bound / t:.1%} of the memory-bandwidth limit"
            )
        out.append(line)
    plan_gib = max((e.peak_memory_gib for e in est.values()), default=None)
    measured_gib = max(r.peak_memory_mib for r in rows) / 1024
    if plan_gib:
        out.append(
            f"peak memory {measured_gib:.2f} GiB (busiest worker) against {plan_gib:.2f} GiB "
            f"planned ({(measured_gib - plan_gib) / plan_gib:+.0%})"
        )
    return out


# ---- measurements -----------------------------------------------------------------------------
def experiments(out: Path, model: str, batch: int, length: int, dtype: str) -> None:
    """GRPO and PPO experiments for random `model`-shaped roles, bf16, the built-in task."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("grpo-tiny", "ppo-tiny"):
        doc = load_experiment(name).model_dump(mode="json", exclude_none=True)
        doc.pop("evaluation", None)
        doc.update(name=name.replace("tiny", "gpu-check"), dtype=dtype)
        doc.update(batch_size=batch, prompt_len=length, gen_len=length, mini_batches=2)
        for role in doc["roles"].values():
            role["model"] = model
            if "optimizer" in role:
                role["optimizer"]["lr"] = 1e-5
        exp = experiment_from_dict(doc)  # refuses anything the schema does not allow
        path = out / f"{exp.name}.json"
        path.write_text(exp.model_dump_json(indent=2, exclude_none=True))
        print(path)


def _model(name: str, dtype, device):
    from executor.model import Transformer
    from executor.model.weights import random_init_
    from plans import preset

    return random_init_(Transformer(preset(name), dtype=dtype, device=device), seed=1)


def _ids(rows: int, length: int, vocab: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, min(vocab, 32000), (rows, length), generator=g).to(device)


def decode(model: str, device: str, rows: int, prompt: int, new: int, hbm_gbps: float) -> dict:
    """Time prefill alone and prefill + `new` greedy steps; the difference is decode."""
    import torch

    from executor.compute.generate import GenerationConfig, generate
    from executor.parallel.context import ParallelContext

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    m = _model(model, dtype, dev)
    ids = _ids(rows, prompt, m.spec.vocab_size, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(n: int) -> float:
        best = float("inf")
        for _ in range(3):  # the best of three: the first also warms up
            sync()
            t0 = time.perf_counter()
            generate(m, ParallelContext.single(), ids, None, GenerationConfig(n))
            sync()
            best = min(best, time.perf_counter() - t0)
        return best

    prefill, total = timed(1), timed(new + 1)
    t = max(total - prefill, 1e-9)
    bound = decode_bound_s(m.spec, dtype.itemsize, rows, prompt + 1, new, 1, hbm_gbps * 1e9)
    return {"tokens_per_s": rows * new / t, "bandwidth_share": bound / t, "prefill_s": prefill}


def precision(model: str, device: str, steps: int, rows: int, length: int) -> list[tuple]:
    """(fp32 loss, bf16 loss) of each of `steps` train steps from the same random weights on
    the same batch: bf16 weights with fp32 master weights and gradients against fp32."""
    import torch

    from executor.compute.train import OptimConfig, make_optimizer, next_token_loss, train_step
    from executor.parallel.context import ParallelContext

    ctx, dev = ParallelContext.single(), torch.device(device)
    losses = []
    for dtype in (torch.float32, torch.bfloat16):
        m = _model(model, dtype, dev)
        opt = make_optimizer(m, OptimConfig(lr=1e-4))
        loss_fn, count_fn = next_token_loss(m, ctx)
        batch = {"input_ids": _ids(rows, length, m.spec.vocab_size, dev)}
        losses.append(
            [train_step(m, ctx, opt, batch, loss_fn, count_fn).loss for _ in range(steps)]
        )
    return list(zip(*losses, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("experiments")
    e.add_argument("out", type=Path)
    r = sub.add_parser("report")
    r.add_argument("run", type=Path)
    d, pr = sub.add_parser("decode"), sub.add_parser("precision")
    for p in (e, d, pr):
        p.add_argument("--model", default="qwen2.5-0.5b")
    for p in (d, pr):
        p.add_argument("--device", default="cuda")
    e.add_argument("--batch", type=int, default=64)
    e.add_argument("--length", type=int, default=128)
    e.add_argument("--dtype", default="bfloat16")
    d.add_argument("--rows", type=int, default=64)
    d.add_argument("--prompt", type=int, default=128)
    d.add_argument("--new", type=int, default=128)
    d.add_argument("--hbm-gbps", type=float, help="default: the device table's figure")
    pr.add_argument("--steps", type=int, default=5)
    pr.add_argument("--rows", type=int, default=8)
    pr.add_argument("--length", type=int, default=256)
    a = ap.parse_args()
    if a.cmd == "experiments":
        experiments(a.out, a.model, a.batch, a.length, a.dtype)
    elif a.cmd == "report":
        from plans import load_plan

        for line in run_report(a.run, load_plan(a.run / "plan.json")):
            print(line)
    elif a.cmd == "decode":
        hbm = a.hbm_gbps or DEVICES[_local_kind(a.device)].hbm_gbps
        f = decode(a.model, a.device, a.rows, a.prompt, a.new, hbm)
        print(
            f"decode {a.model} on {a.device}: {f['tokens_per_s']:,.0f} tokens/s "
            f"({a.rows} rows, {a.prompt}-token prompts, {a.new} steps; prefill "
            f"{f['prefill_s'] * 1e3:.1f} ms apart), {f['bandwidth_share']:.1%} of the "
            f"memory-bandwidth limit at {hbm:g} GB/s"
        )
    else:
        pairs = precision(a.model, a.device, a.steps, a.rows, a.length)
        worst = max(abs(b - f) / abs(f) for f, b in pairs)
        for i, (f, b) in enumerate(pairs):
            print(f"step {i}: fp32 loss {f:.5f}  bf16 loss {b:.5f}  ({(b - f) / f:+.2%})")
        print(f"bf16 against fp32 over {a.steps} steps: largest relative difference {worst:.2%}")


def _local_kind(device: str) -> str:
    """The device table's row for this machine's device (plans.devices)."""
    if device == "cpu":
        return "cpu"
    import torch

    from plans.devices import device_kind

    props = torch.cuda.get_device_properties(0)
    kind = device_kind(props.name, props.total_memory / 2**30)
    if kind is None:
        raise SystemExit(f"{props.name} is not in the device table: give --hbm-gbps")
    return kind


if __name__ == "__main__":
    main()
