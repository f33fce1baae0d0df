"""End to end as a user would: a random Qwen2.5-shaped folder saved by transformers with its
tokenizer (ChatML template), a chat-format JSONL of GSM8K-style problems and the builtin:math
reward; `rlhf-plan search` places it on 2 CPU workers and `rlhf-run` trains 3 iterations."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from plans import example_path
from tests.chat_tokenizer import save_chat_tokenizer

pytestmark = pytest.mark.distributed
PLAN = shutil.which("rlhf-plan") or f"{sys.executable} -m cli.plan_app"
RUN = shutil.which("rlhf-run") or f"{sys.executable} -m cli.run_app"
CHAT = example_path("grpo-math-tiny", "experiment").parent / "data" / "gsm8k-sample-chat.jsonl"


def _qwen_folder(folder):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=True,  # as the small Qwen2.5 releases
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():  # q/k/v biases too
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(folder)
    save_chat_tokenizer(folder)


def test_grpo_math_on_a_qwen_folder_runs_from_a_searched_plan(tmp_path):
    _qwen_folder(tmp_path / "qwen")
    shutil.copy(CHAT, tmp_path / "math.jsonl")
    exp = tmp_path / "exp.toml"
    exp.write_text(
        """name = "qwen-math"
algorithm = "grpo"
batch_size = 2
group_size = 2
prompt_len = 96
gen_len = 12
dtype = "float32"
dataset = "math.jsonl"
reward_function = "builtin:math"
[roles.actor]
model = "qwen"
[roles.ref]
model = "qwen"
[roles.reward]
model = "qwen"
"""
    )
    plan = tmp_path / "plan.json"
    args = ["--nodes", "1", "--gpus-per-node", "2", "--device", "cpu", "--time-limit", "5"]
    r = subprocess.run(
        [*PLAN.split(), "search", str(exp), *args, "--out", str(plan)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(plan.read_text())["cluster"]["gpus_per_node"] == 2
    out = tmp_path / "run"
    r = subprocess.run(
        [
            *RUN.split(),
            str(plan),
            "--iterations",
            "3",
            "--out",
            str(out),
            "--checkpoint-every",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    assert all(0.0 <= row["reward_mean"] <= 1.0 for row in rows)
    # The trained actor is a Hugging Face folder transformers reads as Qwen2, tokenizer included.
    final = out / "final" / "actor"
    assert json.loads((final / "config.json").read_text())["model_type"] == "qwen2"
    assert (final / "tokenizer.json").exists()
