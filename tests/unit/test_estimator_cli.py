"""rlhf-plan estimate / show / schema profile as a user runs them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from plans import example_names, example_path

EXE = shutil.which("rlhf-plan") or f"{sys.executable} -m cli.plan_app"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE.split(), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", example_names("plan"))
def test_estimate_every_example_plan(name):
    r = run("estimate", str(example_path(name, "plan")), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["feasible"] and doc["iteration_time_s"] > 0
    assert doc["profile_kind"] == "analytic" and doc["profile"].startswith("analytic:")
    assert {c["name"] for c in doc["calls"]} == set(
        json.loads(example_path(name, "plan").read_text())["allocations"]
    )
    table = run("estimate", str(example_path(name, "plan")))
    assert table.returncode == 0 and "iteration time" in table.stdout
    assert "analytic" in table.stdout


def test_show_writes_an_svg(tmp_path):
    svg = tmp_path / "t.svg"
    r = run("show", str(example_path("ppo-llama2-7b-8xh100", "plan")), "--svg", str(svg))
    assert r.returncode == 0, r.stderr
    assert "timeline" in r.stdout and "actor_gen" in r.stdout
    text = svg.read_text()
    assert text.startswith("<svg") and text.count("<rect") > 6 and "actor_train" in text


def test_schema_profile():
    r = run("schema", "profile")
    assert r.returncode == 0
    assert json.loads(r.stdout)["title"] == "Profile"


def test_bad_profile_is_one_line_per_problem_on_stderr(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"kind": "measured"}')
    r = run("estimate", str(example_path("ppo-tiny-4cpu", "plan")), "--profile", str(bad))
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    # every missing field on its own line, each naming the file
    assert all(line.startswith(f"error: {bad}: ") for line in lines), lines
    assert any(": id: " in line for line in lines) and any(": roofline: " in line for line in lines)


def test_infeasible_plan_says_why(tmp_path):
    plan = json.loads(example_path("ppo-llama2-70b-128xh100", "plan").read_text())
    plan["allocations"]["actor_train"] = {
        "mesh": {"n_gpus": 1},
        "strategy": {"dp": 1, "tp": 1, "pp": 1},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    r = run("estimate", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "infeasible" in r.stdout and "actor_train: needs" in r.stdout
    r = run("estimate", str(path), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["feasible"] is False and doc["iteration_time_s"] is None
