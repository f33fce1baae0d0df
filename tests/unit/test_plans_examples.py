"""Every shipped example loads, validates against the exported JSON Schema, and round-trips."""

from __future__ import annotations

import json
import tomllib

import jsonschema
import pytest

from plans import example_names, example_path, load_experiment, load_plan, plan_from_dict, save_plan
from plans.schema import json_schema

PLANS = example_names("plan")
EXPERIMENTS = example_names("experiment")


def test_required_examples_are_shipped():
    for name in ("ppo-tiny", "ppo-llama2-7b", "ppo-llama2-70b", "grpo-llama2-7b", "dpo-llama2-7b"):
        assert name in EXPERIMENTS
    assert PLANS, "at least one example plan"


@pytest.mark.parametrize("name", PLANS)
def test_example_plan_matches_schema(name):
    doc = json.loads(example_path(name, "plan").read_text())
    jsonschema.validate(doc, json_schema("plan"))
    load_plan(example_path(name, "plan"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_example_experiment_matches_schema(name):
    doc = tomllib.loads(example_path(name, "experiment").read_text())
    jsonschema.validate(doc, json_schema("experiment"))
    exp = load_experiment(name)
    # A resolved experiment (full model specs) matches the schema too: plans embed it so.
    jsonschema.validate(exp.model_dump(mode="json"), json_schema("experiment"))


def test_schema_rejects_a_broken_plan():
    doc = json.loads(example_path(PLANS[0], "plan").read_text())
    doc["allocations"]["actor_gen"]["strategy"]["dp"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, json_schema("plan"))


@pytest.mark.parametrize("name", PLANS)
def test_plan_round_trip(tmp_path, name):
    plan = load_plan(example_path(name, "plan"))
    save_plan(plan, tmp_path / "p.json")
    again = load_plan(tmp_path / "p.json")
    assert again == plan
    assert plan_from_dict(plan.model_dump(mode="json")) == plan
