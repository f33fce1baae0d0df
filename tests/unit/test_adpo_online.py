"""Online ADPO: the call table, the refusals that keep a reward from being silently ignored,
and the online label noise."""

from __future__ import annotations

import tomllib

import pytest
import torch

from executor.programs.adpo_online import noisy_scores
from plans import PlanError, example_path
from plans.algorithms import mfc_by_name
from plans.io import experiment_from_dict


def _doc(name: str) -> dict:
    return tomllib.loads(example_path(name, "experiment").read_text())


def test_online_example_loads_with_generation_and_scoring_calls():
    exp = experiment_from_dict(_doc("adpo-online-tiny"))
    calls = mfc_by_name("adpo-online")
    assert [m.kind for m in exp.mfcs()] == ["generate", "inference", "inference", "train"]
    assert calls["actor_train"].inputs == ("seq", "logprobs", "ref_logprobs", "rewards")
    assert exp.sequences(calls["actor_gen"]) == exp.batch_size * exp.group_size


@pytest.mark.parametrize("name", ["adpo-tiny", "dpo-tiny", "rm-tiny"])
def test_reward_function_in_offline_preference_is_refused(name):
    doc = _doc(name)
    doc["reward_function"] = "builtin:digits"
    with pytest.raises(PlanError, match="reward_function") as info:
        experiment_from_dict(doc)
    assert "adpo-online" in str(info.value)


def test_online_pairwise_and_single_candidate_refused():
    doc = _doc("adpo-online-tiny")
    doc["adpo"]["mode"] = "pairwise"
    with pytest.raises(PlanError, match="adpo.mode"):
        experiment_from_dict(doc)
    doc = _doc("adpo-online-tiny")
    doc["group_size"] = 1
    with pytest.raises(PlanError, match="group_size"):
        experiment_from_dict(doc)


def test_noisy_scores_reverse_whole_lists():
    score = torch.arange(12, dtype=torch.float32)
    assert torch.equal(noisy_scores(score, 3, 0.0, 7), score)
    out = noisy_scores(score, 3, 0.5, 7).view(4, 3)
    flipped = (out < 0).any(1)
    assert 0 < int(flipped.sum()) < 4  # seed 7 reverses some lists, not all
    ref = score.view(4, 3)
    assert torch.equal(out[flipped], -ref[flipped])
    assert torch.equal(out[~flipped], ref[~flipped])
    assert torch.equal(noisy_scores(score, 3, 1.0, 7), -score)
