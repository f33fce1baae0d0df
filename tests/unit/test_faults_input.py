"""Bad inputs are refused before any worker starts: exit code 1, exactly one `error:` line on
stderr naming the field or the file, no traceback. The CLIs run as a user runs them (a
subprocess); rlhf-run cases also check that no worker was started (the run folder was never
created and the launch line was never printed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from plans import example_path, load_experiment, load_plan
from plans.folders import INDEX

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")])),
}
CPU_PROFILE = ROOT / "estimator/profiles/cpu-epyc-2core-1thread_4workers.json"


def cli(app: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # The timeout only keeps a hung child from hanging the suite; nothing asserts on time.
    cmd = [sys.executable, "-m", f"cli.{app}", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=cwd or ROOT, env=ENV, timeout=300
    )


def refused(r: subprocess.CompletedProcess, *names: str) -> str:
    """The one error line, after checking the exit code, the line count and the names."""
    both = r.stdout + r.stderr
    assert r.returncode == 1, both
    assert "Traceback" not in both, both
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def ppo_doc() -> dict:
    return tomllib.loads(example_path("ppo-tiny", "experiment").read_text())


def write(path: Path, doc: dict | str) -> Path:
    """Text as given; a dict as JSON, with NaN and Infinity as Python writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def validate_doc(
    tmp_path: Path, doc: dict | str, name: str = "exp.json"
) -> subprocess.CompletedProcess:
    return cli("plan_app", "validate", write(tmp_path / name, doc))


# ---- numbers and strict types in experiments --------------------------------------------------
def _set(doc: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return doc


@pytest.mark.parametrize(
    "field,value",
    [
        ("roles.actor.optimizer.betas", [0.9, math.nan]),
        ("generation.temperature", math.inf),
        ("adpo.tau", -math.inf),
        ("seed", 2**70),
        ("seed", -1),
        ("batch_size", True),
        ("batch_size", "8"),
        ("prompt_len", 16.0),
        ("ppo.whiten_advantages", 1),
        ("label_noise", "0.1"),
    ],
)
def test_experiment_number_refused(tmp_path, field, value):
    refused(validate_doc(tmp_path, _set(ppo_doc(), field, value)), field)


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("optimizer = { lr = 3e-3 }", "optimizer = { lr = inf }", "roles.actor.optimizer.lr"),
        ("kl_coef = 0.01", "kl_coef = nan", "ppo.kl_coef"),
    ],
)
def test_toml_non_finite_refused(tmp_path, old, new, field):
    text = example_path("ppo-tiny", "experiment").read_text().replace(old, new, 1)
    refused(validate_doc(tmp_path, text, "exp.toml"), field)


def test_float16_refused_with_the_reason(tmp_path):
    refused(validate_doc(tmp_path, {**ppo_doc(), "dtype": "float16"}), "dtype", "loss scaling")


def test_int_for_a_float_and_schema_still_work(tmp_path):
    doc = _set(ppo_doc(), "roles.actor.optimizer.lr", 1)
    assert validate_doc(tmp_path, doc).returncode == 0
    r = cli("plan_app", "schema", "experiment")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["properties"]["dtype"]["enum"] == ["float32", "bfloat16"]


@pytest.mark.parametrize("name", ["../../../escape", ".hidden", "a/b", ""])
def test_name_cannot_escape_a_folder(tmp_path, name):
    refused(validate_doc(tmp_path, {**ppo_doc(), "name": name}), "name")


# ---- numbers and strict types in plans ---------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("estimate.iteration_time_s", math.inf),
        ("allocations.actor_train.strategy.dp", True),
        ("cluster.memory_gib", math.nan),
        ("experiment.roles.actor.optimizer.eps", math.nan),
    ],
)
def test_plan_number_refused(tmp_path, field, value):
    doc = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())
    doc["estimate"] = {"iteration_time_s": 1.0}
    refused(validate_doc(tmp_path, _set(doc, field, value), "plan.json"), field)


# ---- model folders -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> Path:
    """Folders saved by transformers: the tiny preset's shapes (one file and sharded), and a
    32000-token vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path_factory.mktemp("hf")
    tiny = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=264,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM(tiny)
    model.save_pretrained(base / "one")
    model.save_pretrained(base / "many", max_shard_size="100KB")
    big = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=32000,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(big).save_pretrained(base / "vocab32k")
    return base


def exp_with_actor(tmp_path: Path, hf: Path, source: str) -> tuple[Path, Path]:
    """exp/exp.toml whose actor is the folder `exp/actor` (a copy of hf/source), written as a
    relative path: validation runs from tmp_path, so it resolves only against exp/."""
    folder = tmp_path / "exp" / "actor"
    shutil.copytree(hf / source, folder)
    text = example_path("ppo-tiny", "experiment").read_text()
    text = text.replace('[roles.actor]\nmodel = "tiny"', '[roles.actor]\nmodel = "actor"')
    return write(tmp_path / "exp" / "exp.toml", text), folder


def validate_folder(tmp_path: Path, hf: Path, source: str, corrupt) -> subprocess.CompletedProcess:
    exp, folder = exp_with_actor(tmp_path, hf, source)
    corrupt(folder)
    return cli("plan_app", "validate", exp, cwd=tmp_path)


def _truncate(path: Path, by: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-by])


def _shard(folder: Path) -> Path:
    return folder / sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))[1]


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


def _drop_tensor(folder: Path, key: str) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    del tensors[key]
    save_file(tensors, folder / "model.safetensors")


def _tokenizer(folder: Path, n: int) -> None:
    vocab = {f"t{i}": i for i in range(n)}
    doc = {"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "vocab": vocab}}
    (folder / "tokenizer.json").write_text(json.dumps(doc))


def test_relative_model_folder_resolves_against_the_experiment(tmp_path, hf):
    r = validate_folder(tmp_path, hf, "one", lambda f: None)
    assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stderr
    assert load_experiment(tmp_path / "exp" / "exp.toml").model("actor").checkpoint == str(
        tmp_path / "exp" / "actor"
    )


@pytest.mark.parametrize(
    "source,corrupt,names",
    [
        ("one", lambda f: _truncate(f / "model.safetensors"), ["model.safetensors", "truncated"]),
        ("one", lambda f: (f / "model.safetensors").write_bytes(b""), ["model.safetensors", "empty"]),
        ("one", lambda f: (f / "model.safetensors").write_bytes(b"garbage!" * 64), ["model.safetensors"]),
        ("one", lambda f: (f / "model.safetensors").unlink(), ["actor", "no weights"]),
        ("one", lambda f: (f / "config.json").write_text("{oops"), ["config.json"]),
        ("one", lambda f: _edit_config(f, intermediate_size=128), ["model.safetensors", "shape", "[128, 64]"]),
        ("one", lambda f: _drop_tensor(f, "lm_head.weight"), ["lm_head.weight"]),
        ("many", lambda f: _shard(f).unlink(), [INDEX, "no such file"]),
        ("many", lambda f: _truncate(_shard(f)), ["model-0000", "truncated"]),
        ("many", lambda f: (f / INDEX).write_text('{"weight_map": 3}'), [INDEX]),
        ("one", lambda f: (f / "tokenizer.json").write_text("{not json"), ["tokenizer.json", "not valid JSON"]),
        ("one", lambda f: _tokenizer(f, 300), ["tokenizer.json", "300", "vocab_size=264"]),
        ("vocab32k", lambda f: None, ["actor", "no tokenizer files", "32000"]),
    ],
    ids=[
        "truncated", "empty", "garbage-header", "no-weights", "bad-config", "wrong-shape",
        "missing-tensor", "missing-shard", "truncated-shard", "bad-index", "bad-tokenizer",
        "tokenizer-too-big", "big-vocab-no-tokenizer",
    ],
)  # fmt: skip
def test_broken_model_folder_refused(tmp_path, hf, source, corrupt, names):
    line = refused(validate_folder(tmp_path, hf, source, corrupt), "roles.actor.model", *names)
    assert "exp.toml" in line


# ---- paths relative to the experiment file -----------------------------------------------------
def test_dataset_resolves_against_the_experiment_not_the_cwd(tmp_path):
    write(tmp_path / "prompts.jsonl", '{"prompt": "ab"}\n')  # in the cwd only
    exp = write(tmp_path / "exp" / "exp.json", {**ppo_doc(), "dataset": "prompts.jsonl"})
    beside = tmp_path / "exp" / "prompts.jsonl"
    refused(cli("plan_app", "validate", exp, cwd=tmp_path), "dataset", str(beside))
    write(beside, '{"prompt": "ab"}\n')
    assert load_experiment(exp).dataset == str(beside)


def test_plan_paths_resolve_against_the_plan_not_the_cwd(tmp_path, monkeypatch):
    doc = load_plan(example_path("ppo-tiny-4cpu", "plan")).model_dump(mode="json")
    doc["experiment"]["dataset"] = "data/prompts.jsonl"
    path = write(tmp_path / "plans" / "plan.json", doc)
    monkeypatch.chdir(tmp_path)  # where a cwd-relative reading would look instead
    assert load_plan(path).experiment.dataset == str(tmp_path / "plans" / "data" / "prompts.jsonl")


def test_missing_evaluation_data_refused(tmp_path):
    doc = {**ppo_doc(), "evaluation": {"dataset": "qa.jsonl"}}
    refused(validate_doc(tmp_path, doc), "evaluation.dataset", "qa.jsonl")


# ---- rlhf-run: refused before any worker ---------------------------------------------------------
def run_refused(tmp_path: Path, plan: Path, *names: str, out: Path | None = None) -> str:
    out = out or tmp_path / "run"
    before = out.exists() and sorted(out.rglob("*"))
    r = cli("run_app", plan, "--iterations", "1", "--out", out)
    line = refused(r, *names)
    assert "workers" not in r.stderr  # the launch line
    assert (out.exists() and sorted(out.rglob("*"))) == before  # nothing written
    return line


def plan_with(tmp_path: Path, **experiment) -> Path:
    doc = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())
    doc["experiment"].update(experiment)
    return write(tmp_path / "plan.json", doc)


def test_run_refuses_a_truncated_checkpoint(tmp_path, hf):
    folder = tmp_path / "actor"
    shutil.copytree(hf / "one", folder)
    _truncate(folder / "model.safetensors")
    doc = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())
    doc["experiment"]["roles"]["actor"]["model"]["checkpoint"] = str(folder)
    plan = write(tmp_path / "plan.json", doc)
    names = ("plan.json", "experiment.roles.actor.model", "model.safetensors", "truncated")
    run_refused(tmp_path, plan, *names)
    refused(cli("plan_app", "validate", plan), *names)


def test_run_refuses_missing_evaluation_data(tmp_path):
    plan = plan_with(tmp_path, evaluation={"dataset": str(tmp_path / "qa.jsonl")})
    run_refused(tmp_path, plan, "qa.jsonl")


def test_run_refuses_an_unloadable_reward_function(tmp_path):
    plan = plan_with(tmp_path, reward_function="no_such_module_xyz:score")
    run_refused(tmp_path, plan, "no_such_module_xyz")


def test_run_refuses_out_that_is_a_file(tmp_path):
    out = write(tmp_path / "run", "not a folder")
    run_refused(tmp_path, example_path("ppo-tiny-4cpu", "plan"), "--out", "is a file", out=out)


def test_run_refuses_out_below_a_file(tmp_path):
    write(tmp_path / "file", "x")
    out = tmp_path / "file" / "run"
    run_refused(
        tmp_path, example_path("ppo-tiny-4cpu", "plan"), "--out", "cannot be created", out=out
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_run_refuses_a_read_only_out(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        run_refused(
            tmp_path, example_path("ppo-tiny-4cpu", "plan"), "--out", "not writable", out=ro / "run"
        )
    finally:
        ro.chmod(0o755)


# ---- profiles ------------------------------------------------------------------------------------
def test_search_refuses_a_cpu_profile_for_h100(tmp_path):
    args = "search ppo-tiny --device h100 --profile".split()
    r = cli("plan_app", *args, CPU_PROFILE, "--out", tmp_path / "p.json")
    refused(r, "--profile", "'cpu'", "'h100'")
    assert not (tmp_path / "p.json").exists()


def test_search_with_a_matching_or_overridden_profile(tmp_path):
    """The demo's way (a cpu profile, --device cpu) and an explicit override still plan."""
    common = ["--method", "symmetric", "--json", "--profile", CPU_PROFILE, "--out"]
    cpu = "search rm-tiny --gpus-per-node 4 --device cpu".split()
    assert cli("plan_app", *cpu, *common, tmp_path / "a.json").returncode == 0
    h100 = "search rm-tiny --device h100 --any-profile-device".split()
    assert cli("plan_app", *h100, *common, tmp_path / "b.json").returncode == 0


# ---- metrics -----------------------------------------------------------------------------------
def test_metrics_rows_are_strict_json(tmp_path):
    from cli.run_views import load_metrics, reward_curve
    from executor.runtime.metrics import append_row
    from plans.metrics import MetricsRow

    def row(it, **stats):
        return MetricsRow(
            iteration=it, iteration_s=1.0, realloc_s=0.0, peak_memory_mib=1.0, calls={}, **stats
        )

    append_row(tmp_path, row(0, reward_mean=0.5))
    append_row(tmp_path, row(1, reward_mean=math.nan, kl_mean=math.inf))

    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=no_constants) for line in lines]
    assert rows[1]["reward_mean"] is None and rows[1]["kl_mean"] is None
    assert [r.model_dump() for r in load_metrics(tmp_path)] == rows
    assert "1 iterations" in reward_curve(load_metrics(tmp_path))


# ---- the tokenizer fallback --------------------------------------------------------------------
def test_byte_tokenizer_never_stands_in_for_a_large_vocabulary(hf):
    from executor.data.tokenizer import ByteTokenizer, tokenizer_for
    from executor.model.hf_config import spec_from_folder
    from plans import PlanError
    from plans.folders import BYTE_TOKENIZER_IDS

    assert ByteTokenizer.vocab_size == BYTE_TOKENIZER_IDS
    assert isinstance(tokenizer_for([spec_from_folder(hf / "one")]), ByteTokenizer)  # vocab 264
    with pytest.raises(PlanError, match=r"vocab32k: no tokenizer files .* 32000"):
        tokenizer_for([spec_from_folder(hf / "vocab32k")])
