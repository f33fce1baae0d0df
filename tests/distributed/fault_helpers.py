"""Helpers the fault-injection tests hand to rlhf-run's workers (importable by spawned
processes): a reward rule that turns NaN part-way through a run."""

from __future__ import annotations

from executor.data.sources import digit_reward

NAN_AFTER = 8
"""Calls (per worker process) before the rule answers NaN: with a batch of 8 split over two
dp ranks, each rank scores 4 samples an iteration, so iteration 2 is the first with NaN."""

_calls = 0


def nan_later(prompt: str, response: str) -> float:
    global _calls
    _calls += 1
    return float("nan") if _calls > NAN_AFTER else digit_reward(prompt, response)
