"""The console scripts as a user runs them: exit codes, stdout/stderr discipline, no tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from plans import example_names, example_path, load_experiment

EXE = shutil.which("rlhf-plan") or f"{sys.executable} -m cli.plan_app"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE.split(), *args], capture_output=True, text=True, timeout=60)


def test_graph_json_ppo_tiny():
    r = run("graph", "ppo-tiny", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # exactly one JSON document
    assert [n["mfc"] for n in doc["nodes"]] == [
        "actor_gen",
        "ref_inf",
        "rew_inf",
        "critic_inf",
        "actor_train",
        "critic_train",
    ]
    assert all(e["kind"] == "data" for e in doc["edges"])
    r2 = json.loads(run("graph", "ppo-tiny", "--json", "--iterations", "2").stdout)
    version = {(e["source"], e["target"]) for e in r2["edges"] if e["kind"] == "version"}
    assert version == {("actor_train@0", "actor_gen@1"), ("critic_train@0", "critic_inf@1")}


def test_graph_table():
    r = run("graph", "ppo-tiny")
    assert r.returncode == 0 and "actor_gen" in r.stdout and "critic_train" in r.stdout


def test_schema_and_validate_examples():
    schema = json.loads(run("schema", "plan").stdout)
    assert schema["title"] == "Plan"
    for kind in ("experiment", "cluster"):
        assert json.loads(run("schema", kind).stdout)["type"] == "object"
    for name in example_names("plan"):
        r = run("validate", str(example_path(name, "plan")))
        assert r.returncode == 0 and r.stdout.startswith("ok:"), r.stderr
    r = run("validate", str(example_path("ppo-tiny", "experiment")))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "content,field",
    [
        ("{oops", "not valid JSON"),
        ('{"format_version": 1, "cluster": {}, "experiment": 3, "allocations": {}}', "experiment"),
    ],
)
def test_validate_rejects_with_one_line(tmp_path, content, field):
    p = tmp_path / "bad.json"
    p.write_text(content)
    r = run("validate", str(p))
    assert r.returncode != 0
    assert field in r.stderr and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()  # one line per problem, each naming file and field
    assert all(line.startswith(f"error: {p}: ") for line in lines), r.stderr


def test_validate_mutated_plan_names_field(tmp_path):
    doc = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())
    doc["allocations"]["actor_train"]["strategy"]["tp"] = 3
    doc["allocations"]["actor_train"]["strategy"]["dp"] = 1
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(doc))
    r = run("validate", str(p))
    assert (
        r.returncode == 1 and "allocations.actor_train" in r.stderr and "Traceback" not in r.stderr
    )


def test_search_and_diff(tmp_path):
    out = tmp_path / "plan.json"
    r = run(
        "search",
        "ppo-tiny",
        "--nodes",
        "1",
        "--gpus-per-node",
        "4",
        "--device",
        "cpu",
        "--time-limit",
        "60",
        "--seed",
        "1",
        "--out",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["plan"] == str(out) and summary["iteration_time_s"] > 0
    assert summary["iteration_time_s"] <= min(v for v in summary["baselines"].values() if v)
    assert run("validate", str(out)).returncode == 0
    r = run("diff", str(example_path("ppo-tiny-4cpu", "plan")), str(out), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {c["call"] for c in doc["calls"]} == {
        "actor_gen",
        "ref_inf",
        "rew_inf",
        "critic_inf",
        "actor_train",
        "critic_train",
    }
    r = run("diff", str(example_path("ppo-tiny-4cpu", "plan")), str(out))
    assert r.returncode == 0 and "iteration" in r.stdout


def test_search_rejects_unknown_device():
    r = run("search", "ppo-tiny", "--device", "tpu9")
    assert r.returncode == 1 and "device" in r.stderr and "Traceback" not in r.stderr


def test_unknown_experiment():
    r = run("graph", "no-such-experiment")
    assert r.returncode == 1 and "not a built-in experiment" in r.stderr


def test_run_rejects_bad_dataset_line_before_starting_workers(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ab"}\n{"prompt": 5}\n')
    run_exe = shutil.which("rlhf-run") or f"{sys.executable} -m cli.run_app"
    r = subprocess.run(
        [*run_exe.split(), str(example_path("ppo-tiny-4cpu", "plan")), "--data", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "prompts.jsonl: line 2" in r.stderr and "Traceback" not in r.stderr


def test_run_resume_without_checkpoint(tmp_path):
    run_exe = shutil.which("rlhf-run") or f"{sys.executable} -m cli.run_app"
    r = subprocess.run(
        [
            *run_exe.split(),
            str(example_path("ppo-tiny-4cpu", "plan")),
            "--resume",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "no complete checkpoint" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_run_refuses_a_gpu_plan_without_cuda_in_one_line(tmp_path):
    """On a machine without CUDA a plan for GPUs stops before any worker starts, in one line
    that names the field and the device, and writes nothing."""
    run_exe = shutil.which("rlhf-run") or f"{sys.executable} -m cli.run_app"
    out = tmp_path / "run"
    r = subprocess.run(
        [*run_exe.split(), str(example_path("ppo-llama2-7b-8xh100", "plan")), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "cluster.device" in lines[0] and "h100" in lines[0] and "no CUDA device" in lines[0]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
@pytest.mark.parametrize("device", ["h100", "cuda"])
def test_profile_for_a_gpu_without_cuda_says_why_in_one_line(device):
    r = run("profile", "--device", device, "--quick")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--device {device}" in lines[0] and "no CUDA device" in lines[0]


def test_profile_names_the_devices_it_knows():
    r = run("profile", "--device", "tpu", "--quick")
    assert r.returncode == 1 and "h100" in r.stderr and "cuda" in r.stderr


def test_every_result_command_prints_json(tmp_path):
    plan = str(example_path("ppo-tiny-4cpu", "plan"))
    for args in (
        ("show", plan, "--json"),
        ("validate", plan, "--json"),
        ("validate", str(example_path("ppo-tiny", "experiment")), "--json"),
        ("graph", "ppo-tiny", "--json"),
        ("estimate", plan, "--json"),
        ("diff", plan, plan, "--json"),
    ):
        r = run(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert isinstance(json.loads(r.stdout), dict), args
    shown = json.loads(run("show", plan, "--json").stdout)
    assert set(shown["allocations"]) == {c["name"] for c in shown["calls"]}


def test_search_shows_the_chosen_staleness_next_to_the_synchronous_plan(tmp_path):
    """One prompt per iteration on two devices: generating one iteration ahead wins, and
    search, estimate and show say so."""
    doc = load_experiment(example_path("ppo-tiny", "experiment")).model_dump(mode="json")
    doc.update(batch_size=1, mini_batches=1)
    doc["async"] = {"max_staleness": 1}
    exp, plan = tmp_path / "ppo-async.json", tmp_path / "plan.json"
    exp.write_text(json.dumps(doc))
    args = ("search", str(exp), "--gpus-per-node", "2", "--device", "cpu",
            "--method", "exhaustive", "--out", str(plan))  # fmt: skip
    r = run(*args, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["max_staleness"] == 1 and got["allowed_max_staleness"] == 1
    assert got["synchronous_iteration_time_s"] > got["iteration_time_s"]
    assert got["speedup_over_synchronous"] == pytest.approx(
        got["synchronous_iteration_time_s"] / got["iteration_time_s"]
    )
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "staleness k=1: " in r.stdout and "x the synchronous plan's" in r.stdout
    assert "k=0 (synchronous)" in r.stdout
    assert json.loads(plan.read_text())["max_staleness"] == 1
    est = json.loads(run("estimate", str(plan), "--json").stdout)
    assert est["max_staleness"] == 1
    assert est["iteration_time_s"] == pytest.approx(got["iteration_time_s"])
    train = next(c for c in est["calls"] if c["name"] == "actor_train")
    assert train["breakdown_s"]["proximal"] > 0
    for cmd in ("estimate", "show"):
        r = run(cmd, str(plan))
        assert r.returncode == 0 and "staleness k=1" in r.stdout, (cmd, r.stderr)
    r = run("estimate", str(example_path("ppo-tiny-4cpu", "plan")))
    assert "staleness" not in r.stdout


def test_search_writes_a_plan_only_where_out_says(tmp_path):
    args = ("search", "ppo-tiny", "--gpus-per-node", "2", "--device", "cpu", "--time-limit", "5")
    r = subprocess.run(
        [*EXE.split(), *args, "--json"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["plan"] is None and set(doc["allocations"]) >= {"actor_gen", "actor_train"}
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


def test_bad_experiment_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "bad"\nalgorithm = "ppo"\nbatch_size = -3\nprompt_len = "x"\ngen_len = 16\n'
        '[roles.actor]\nmodel = "tiny"\noptimizer = { lr = -1 }\n[roles.critic]\nmodel = "nope"\n'
        '[roles.ref]\nmodel = "tiny"\n[roles.reward]\nmodel = "tiny"\n'
    )
    r = run("validate", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    fields = {"batch_size", "prompt_len", "roles.actor.optimizer.lr", "roles.critic.model"}
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(fields), r.stderr
    assert all(any(f"{bad}: {f}: " in line for line in lines) for f in fields), r.stderr
    doc = json.loads(run("validate", str(bad), "--json").stdout)
    assert doc["ok"] is False and {p["field"] for p in doc["problems"]} == fields


def test_piped_tables_keep_every_value():
    r = run("estimate", str(example_path("ppo-llama2-7b-8xh100", "plan")))
    assert r.returncode == 0 and "…" not in r.stdout and "actor_train" in r.stdout


def test_exit_codes_in_help():
    assert "Exit codes" in run("--help").stdout


def test_eval_refuses_bad_inputs_in_one_line(tmp_path):
    exe = [sys.executable, "-m", "cli.eval_app"]
    cases = (
        ([str(tmp_path / "nothing")], "no such folder"),
        ([str(tmp_path)], "neither a run folder"),
        ([str(tmp_path), "--iteration", "3"], "--iteration"),
    )
    for args, words in cases:
        r = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Exit codes" in subprocess.run([*exe, "--help"], capture_output=True, text=True).stdout
