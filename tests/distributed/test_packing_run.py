"""Runs with [packing] train like padded ones: PPO and GRPO iterations on one process and on a
multi-mesh plan (train calls pp 2 x dp 2, inference calls tp 2 or dp 2) give the padded run's
metrics and weights within rounding."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from plans import experiment_from_dict
from tests.distributed.test_algorithms_run import _experiment, _run, multi_mesh, one_process

pytestmark = pytest.mark.distributed

CASES = {
    "ppo": ("ppo-tiny", {"mini_batches": 1}),
    "grpo": ("grpo-tiny", {"group_size": 2, "mini_batches": 2}),
    "dpo": ("dpo-tiny", {}),
}
KEYS = ("reward_mean", "actor_loss", "critic_loss", "response_len", "pref_accuracy", "kl_mean")


def _varied_prompts(tmp) -> str:
    """Prompts of 1..14 letters: rows left-padded by different amounts. (The random tiny actor
    rarely samples EOS, so responses mostly run to gen_len; DPO's pairs vary in length.)"""
    path = tmp / "prompts.jsonl"
    words = ["abcdefghijklmn"[: 1 + (i * 5) % 14] + ":" for i in range(24)]
    path.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in words))
    return str(path)


def _packed(exp):
    return experiment_from_dict({**exp.model_dump(mode="json"), "packing": {}})


@pytest.mark.parametrize("case", list(CASES))
def test_packed_run_matches_padded(case, tmp_path):
    name, changes = CASES[case]
    if name != "dpo-tiny":
        changes = {**changes, "dataset": _varied_prompts(tmp_path)}
    exp = _experiment(name, **changes)
    p_out, p_row = _run(tmp_path, "padded", one_process(exp))
    for layout, plan in (("one", one_process), ("multi", multi_mesh)):
        k_out, k_row = _run(tmp_path, f"packed-{layout}", plan(_packed(exp)))
        compared = [k for k in KEYS if k in p_row]
        assert compared
        for key in compared:
            assert k_row[key] == pytest.approx(p_row[key], abs=1e-5), (layout, key)
        for role in [r for r in exp.roles if exp.roles[r].trainable]:
            a = load_file(str(k_out / "final" / role / "model.safetensors"))
            b = load_file(str(p_out / "final" / role / "model.safetensors"))
            for k in b:
                msg = f"{case} {layout} {role} {k}"
                torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=msg)
            if layout == "one":  # packed rows round differently: the packed path really ran
                assert any(not torch.equal(a[k], b[k]) for k in b), (case, role)
