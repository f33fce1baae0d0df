"""config.json by allow-list: every key that changes the numerics is implemented or refused in
one line naming it, at validate/search time. Folders are written by transformers itself, as
a user would get them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForCausalLM

from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_
from plans import PlanError, preset
from plans.model import from_hf_folder

EXE = shutil.which("rlhf-plan") or f"{sys.executable} -m cli.plan_app"
BASE = {
    "hidden_size": 32,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 128,
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE.split(), *args], capture_output=True, text=True, timeout=120)


def _hf_folder(folder, model_type: str, **kw):
    """A random model saved by transformers' save_pretrained, every tensor perturbed (biases
    away from 0, norms away from 1) so a mishandled one shows in the logits."""
    cfg = AutoConfig.for_model(model_type, **{**BASE, **kw})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(folder)
    return model


def _experiment(tmp_path, folder_name: str):
    path = tmp_path / "exp.toml"
    path.write_text(
        f"""name = "t"
algorithm = "grpo"
batch_size = 4
group_size = 2
prompt_len = 8
gen_len = 8
dtype = "float32"
reward_function = "builtin:digits"
[roles.actor]
model = "{folder_name}"
[roles.ref]
model = "{folder_name}"
[roles.reward]
model = "tiny"
"""
    )
    return path


def _logits_match(folder, hf) -> float:
    ours = load_checkpoint_(Transformer(from_hf_folder(folder)), folder)
    ids = torch.randint(0, BASE["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(ids, torch.arange(24).expand(2, -1)) - hf(ids).logits).abs().max().item()


# ---- what the issue found silently wrong now loads exactly ------------------------------------
@pytest.mark.parametrize(
    "model_type,kw",
    [
        ("qwen2", {}),  # q/k/v biases
        ("llama", {"attention_bias": True, "mlp_bias": True}),
        ("mistral", {"sliding_window": 8}),  # 24 tokens: the window bites
        ("qwen3", {"head_dim": 16}),  # q/k norms, head_dim != hidden / heads
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                }
            },
        ),
        ("qwen2", {"rope_scaling": {"type": "yarn", "factor": 4.0}, "tie_word_embeddings": True}),
    ],
)
def test_transformers_folders_load_exactly(tmp_path, model_type, kw):
    hf = _hf_folder(tmp_path / "m", model_type, **kw)
    assert _logits_match(tmp_path / "m", hf) < 1e-4


def test_validate_and_search_accept_llama31_and_yarn_folders(tmp_path):
    """Once `TypeError: unhashable type: 'dict'` inside search; now a plan."""
    _hf_folder(
        tmp_path / "m",
        "llama",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    exp = _experiment(tmp_path, "m")
    r = _run("validate", str(exp))
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stderr
    args = ["--nodes", "1", "--gpus-per-node", "2", "--device", "cpu", "--time-limit", "2"]
    r = _run("search", str(exp), *args, "--out", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr
    assert _run("validate", str(tmp_path / "plan.json")).returncode == 0


@pytest.mark.parametrize(
    "model_type,kw,key",
    [
        ("llama", {"hidden_act": "gelu"}, "'hidden_act' = 'gelu'"),
        ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 8}, "sliding"),
        ("llama", {"attention_dropout": 0.1}, "'attention_dropout' = 0.1"),
    ],
)
def test_validate_refuses_what_is_not_implemented_in_one_line(tmp_path, model_type, kw, key):
    _hf_folder(tmp_path / "m", model_type, **kw)
    r = _run("validate", str(_experiment(tmp_path, "m")))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()  # one line per role that uses the folder
    assert lines and all(key in line and ": roles." in line for line in lines), r.stderr


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"model_type": "gpt2"}, "'model_type' = 'gpt2'"),
        ({"architectures": ["Phi3ForCausalLM"]}, "'architectures'"),
        ({"architectures": ["Qwen2ForCausalLM"]}, "'architectures'"),  # model_type llama
        ({"quantization_config": {"quant_method": "gptq"}}, "'quantization_config'"),
        ({"final_logit_softcapping": 30.0}, "'final_logit_softcapping'"),
        ({"partial_rotary_factor": 0.5}, "'partial_rotary_factor'"),
        ({"hidden_size": "32"}, "'hidden_size'"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "'longrope'"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "'layer_types'"),
        ({"sliding_window": 8}, "'sliding_window' = 8: llama"),
        ({"mlp_bias": True, "model_type": "mistral", "architectures": None}, "'mlp_bias'"),
        ({"head_dim": 7}, "'head_dim'"),
    ],
)
def test_config_keys_refused_by_name(tmp_path, change, needle):
    folder = tmp_path / "m"
    folder.mkdir()
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **BASE, **change}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PlanError) as e:
        from_hf_folder(folder)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_absent_keys_take_the_family_defaults(tmp_path):
    """As transformers' config classes: Qwen3's head_dim is 128 and Mistral's window 4096
    when config.json leaves them out, and rms_norm_eps is 1e-6 for every family."""
    for model_type, want in [
        ("qwen3", {"head_dim": 128, "num_key_value_heads": 2}),
        ("mistral", {"sliding_window": 4096, "rms_norm_eps": 1e-6}),
        ("llama", {"rms_norm_eps": 1e-6, "num_key_value_heads": 4}),
    ]:
        folder = tmp_path / model_type
        folder.mkdir()
        cfg = {k: v for k, v in BASE.items() if k != "num_key_value_heads"}
        if model_type != "llama":  # their default kv heads (8, 32) would not divide 4
            cfg["num_key_value_heads"] = 2
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, **cfg}))
        spec = from_hf_folder(folder)
        hf = AutoConfig.from_pretrained(folder)
        for key, value in want.items():
            assert getattr(spec, key) == value == getattr(hf, key), (model_type, key)


def test_specs_are_hashable_for_the_search_cache():
    assert len({preset(n) for n in ("llama3.1-8b", "qwen3-8b", "mistral-7b", "llama3.1-8b")}) == 3


# ---- property: accept (and load exactly) or refuse in one line ---------------------------------
_ROPES = [
    None,
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 2.0},
    {"type": "linear", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "factor": 2.0, "beta_fast": 16, "truncate": False},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
]
_FAMILY = {
    "llama": {"attention_bias": st.booleans(), "mlp_bias": st.booleans(), "head_dim": st.just(12)},
    "mistral": {"sliding_window": st.sampled_from([None, 4, 8, 1000]), "head_dim": st.just(12)},
    "qwen2": {"use_sliding_window": st.just(False), "max_window_layers": st.just(1)},
    "qwen3": {"attention_bias": st.booleans(), "head_dim": st.sampled_from([6, 8, 12])},
}
_COMMON = {
    "rope_scaling": st.sampled_from(_ROPES),
    "rope_theta": st.sampled_from([10000.0, 500000.0]),
    "rms_norm_eps": st.sampled_from([1e-6, 1e-5]),
    "tie_word_embeddings": st.booleans(),
    "num_key_value_heads": st.sampled_from([None, 1, 2, 4]),
    "hidden_act": st.just("silu"),
    "attention_dropout": st.just(0.0),
    "pretraining_tp": st.just(1),
    "bos_token_id": st.just(1),
    "torch_dtype": st.just("float32"),
}
# Each of these alone is a reason to refuse.
_POISON = [
    ("hidden_act", "gelu"),
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}),
    ("rope_scaling", {"rope_type": "linear"}),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0}),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0, "beta_fast": 3}),
    ("rope_theta", 0.0),
    ("attention_dropout", 0.1),
    ("head_dim", 7),
    ("num_key_value_heads", 3),
    ("foo_scale", 2.0),
    ("use_sliding_window", True),
    ("hidden_size", "32"),
    ("model_type", "gemma"),
]


@st.composite
def configs(draw):
    model_type = draw(st.sampled_from(sorted(_FAMILY)))
    cfg = {"model_type": model_type, **BASE, "hidden_size": draw(st.sampled_from([32, 48]))}
    for key, values in {**_FAMILY[model_type], **_COMMON}.items():
        if draw(st.booleans()):
            cfg[key] = draw(values)
    if draw(st.integers(0, 2)) == 0:
        key, value = draw(st.sampled_from(_POISON))
        cfg[key] = value
    if draw(st.booleans()):  # transformers 5 spelling of the RoPE settings
        rope = cfg.pop("rope_scaling", None) or {"rope_type": "default"}
        cfg["rope_parameters"] = {**rope, "rope_theta": cfg.pop("rope_theta", 10000.0)}
    return cfg


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cfg=configs())
def test_config_is_accepted_exactly_or_refused_in_one_line(tmp_path_factory, cfg):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        spec = from_hf_folder(folder)
    except PlanError as e:
        msg = str(e)
        assert "\n" not in msg
        assert any(repr(k) in msg or f"{k}=" in msg or f".{k}" in msg for k in cfg), msg
        return
    # Accepted: transformers builds the same model from this very file.
    hf_cfg = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * 0.05 + (1.0 if "norm" in name else 0.0))
    hf.save_pretrained(folder)
    assert spec.num_params() == sum(p.numel() for p in hf.parameters())
    assert _logits_match(folder, hf) < 1e-4


# ---- published config.json files read into the presets ---------------------------------------
PUBLISHED = {
    "llama3.1-8b": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
    },
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000,
    },
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "qwen3-8b": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
        "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
        "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936,
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_read_as_the_presets(tmp_path, name):
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED[name]))
    spec = from_hf_folder(tmp_path)
    assert spec.model_copy(update={"name": name, "checkpoint": None}) == preset(name)
