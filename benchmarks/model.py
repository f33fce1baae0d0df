"""Executor model vs transformers on this machine (CPU unless --device cuda): decode tokens/s
of greedy generation with a KV cache, and forward+backward tokens/s of next-token
cross-entropy, on the same random weights. Prints one line per figure.

    .venv/bin/python benchmarks/model.py --model tiny --batch 8
    .venv/bin/python benchmarks/model.py --family qwen3   # 50-100M models of each family
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from executor.compute.generate import GenerationConfig, generate
from executor.compute.train import next_token_loss
from executor.model import Transformer
from executor.model.hf_config import transformers_model
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.parallel.pipeline import pipeline_train
from plans.model import ModelSpec, RopeScaling, preset

# 50-100M parameter models of each family (vocabulary 32000), each with what its family adds.
_DIMS = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=32000,
    max_position_embeddings=2048,
)
FAMILIES = {
    "llama": ModelSpec(
        name="llama-bias-69m",
        attention_bias=True,
        mlp_bias=True,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=256,
        ),
        **_DIMS,
    ),  # fmt: skip
    "qwen2": ModelSpec(name="qwen2-53m", architecture="qwen2", tie_word_embeddings=True, **_DIMS),
    "qwen3": ModelSpec(name="qwen3-77m", architecture="qwen3", head_dim=128, **_DIMS),
    "mistral": ModelSpec(name="mistral-69m", architecture="mistral", sliding_window=128, **_DIMS),
}


def _race(a, b, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` seconds of `a` and of `b`, alternating the two so that load from
    other processes on the machine hits both alike (the minimum is the least disturbed run)."""
    a(), b()  # warm-up: allocations, kernel selection
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny", help="preset name (tiny, tiny-mha, small)")
    ap.add_argument("--family", choices=sorted(FAMILIES), help="a 50-100M model of a family")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=128, help="generated tokens per sequence")
    ap.add_argument("--seq", type=int, default=256, help="training sequence length")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["decode", "train"], help="run one of the two figures")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dev = torch.device(args.device)
    spec = FAMILIES[args.family] if args.family else preset(args.model)
    ctx = ParallelContext.single()
    ours = random_init_(Transformer(spec), seed=0).to(dev)
    hf = transformers_model(spec, ours.state_dict(), attn_implementation="sdpa").to(dev)
    print(
        f"model={spec.name if args.family else args.model} params={spec.num_params() / 1e6:.1f}M batch={args.batch} "
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__}"
    )

    if args.only != "train":
        bench_decode(args, ours, hf, ctx, dev)
    if args.only != "decode":
        bench_train(args, ours, hf, ctx, dev)


def bench_decode(args, ours, hf, ctx, dev) -> None:
    # ---- decode --------------------------------------------------------------------
    prompts = torch.randint(0, 256, (args.batch, args.prompt), device=dev)
    cfg = GenerationConfig(args.new, pad_token_id=258)

    def ours_gen():
        generate(ours, ctx, prompts, None, cfg)

    @torch.no_grad()
    def hf_gen():
        hf.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            do_sample=False,
            pad_token_id=258,
            eos_token_id=None,
        )

    same = torch.equal(
        generate(ours, ctx, prompts, None, cfg).tokens,
        hf.generate(
            prompts, max_new_tokens=args.new, do_sample=False, pad_token_id=258, eos_token_id=None
        )[:, args.prompt :],
    )
    n_tok = args.batch * args.new
    t_ours, t_hf = _race(ours_gen, hf_gen, args.repeats)
    print(
        f"decode  ours {n_tok / t_ours:9.0f} tok/s   transformers {n_tok / t_hf:9.0f} tok/s   "
        f"ratio {t_hf / t_ours:.2f}x   (prompt {args.prompt}, {args.new} new, same tokens: {same})"
    )


def bench_train(args, ours, hf, ctx, dev) -> None:
    # ---- forward + backward ---------------------------------------------------------
    ids = torch.randint(0, 256, (args.batch, args.seq), device=dev)
    loss_fn, _ = next_token_loss(ours, ctx)
    denom = args.batch * (args.seq - 1)

    def ours_fb():
        ours.zero_grad(set_to_none=True)
        pipeline_train(ours, ctx, [{"input_ids": ids}], lambda out, mb: loss_fn(out, mb) / denom)

    def hf_fb():
        hf.zero_grad(set_to_none=True)
        logits = hf(ids).logits
        F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()).backward()

    hf.train()
    n_tok = args.batch * args.seq
    t_ours, t_hf = _race(ours_fb, hf_fb, args.repeats)
    print(
        f"fwd+bwd ours {n_tok / t_ours:9.0f} tok/s   transformers {n_tok / t_hf:9.0f} tok/s   "
        f"ratio {t_hf / t_ours:.2f}x   (seq {args.seq})"
    )


if __name__ == "__main__":
    main()
