"""Bounded staleness: the actor's generation running up to k iterations ahead of its training.

With a plan's `max_staleness` k, the actor's generate calls of iteration i sample with the
weights written by the actor's train call of iteration i - 1 - k: parameter version
max(0, i - k), where version v is the weights after v train calls. k = 0 is the synchronous
order (generation i waits for train i - 1). The data such a call produces is up to k versions
old when the train call of iteration i reads it, so the policy loss corrects for it
(decoupled PPO, docs/ASYNC.md).

Where the weights move. A generate call in another layout than the actor's home reads a view
of the home weights (plans.residency). Under staleness the view that generation i + k will
read is taken from the home right before the actor's train call of iteration i, the last
moment the home still holds version i; generation i has used its own view by then (it comes
earlier in the global order), so k views of the generation layout are alive at most.
Generation of iterations 0 .. k - 1 reads one view of version 0, taken right before the
generate call of iteration 0 (a move there, as with k = 0). Views are staged before every
train call, also those whose generation lies past the run's end (a checkpoint keeps them for
a longer resumed run). A staged view is a copy: the role never hosts home rows inside it
(plans.residency.Residency.of with the plan's k), and it is refused when generation runs in
the train call's own layout (`home_layout_calls`). The generation ranks take part in every
staging move where the global order has it, so they run at most one iteration ahead of the
actor's train call: generation i + 1 overlaps train call i from k = 1 on, and k > 1 adds
no overlap (only views and staleness). This is the one rule the runtime (which
makes the moves there, executor.runtime.staged) and the simulator (which prices them there)
share.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from plans.algorithms import MFC
from plans.strict import STRICT

ASYNC_ALGORITHMS = ("ppo", "grpo")
"""Algorithms whose policy loss has the decoupled (off-policy) correction."""

MAX_STALENESS = 8


class AsyncSpec(BaseModel):
    """How far the actor's generation may run ahead of its training (`[async]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    max_staleness: int = Field(
        0,
        ge=0,
        le=MAX_STALENESS,
        description="The most iterations generation may run ahead of training; the search "
        "picks the fastest k from 0 to this (0: synchronous, as before).",
    )
    importance_cap: float = Field(
        5.0,
        gt=1,
        description="Tokens whose behaviour importance weight pi_prox / pi_behav exceeds "
        "this are left out of the policy loss (AReaL's cap); only used when k > 0.",
    )


def stale_calls(calls: tuple[MFC, ...], k: int) -> tuple[str, ...]:
    """Names of the calls that sample with stale weights: the actor's generate calls."""
    if k == 0:
        return ()
    return tuple(m.name for m in calls if m.role == "actor" and m.kind == "generate")


def refresh_call(calls: tuple[MFC, ...], k: int) -> str | None:
    """The call before which the staged generation view is refreshed from the home: the
    actor's train call (None when k == 0: views are taken right before each generate call)."""
    if k == 0:
        return None
    return next(m.name for m in calls if m.role == "actor" and m.kind == "train")


def home_layout_calls(
    calls: tuple[MFC, ...], k: int, layout_of: Mapping[str, Hashable]
) -> tuple[str, ...]:
    """Stale calls that run in their role's home layout (`layout_of`: call -> layout, as
    plans.residency.layout_key gives it). Refused: generation and training then share the
    devices and run one after the other, so running ahead buys no time, and sampling with
    an old version would need a copy of the weights next to the home."""
    stale = stale_calls(calls, k)
    home = {m.role: layout_of[m.name] for m in calls if m.kind == "train"}
    return tuple(m.name for m in calls if m.name in stale and layout_of[m.name] == home[m.role])


def version_used(iteration: int, k: int) -> int:
    """Parameter version the stale calls of `iteration` sample with."""
    return max(0, iteration - k)


def version_lag(iteration: int, k: int) -> int:
    """How many train calls the batch of `iteration` is behind when it is trained on."""
    return iteration - version_used(iteration, k)


def private_view_roles(calls: tuple[MFC, ...], k: int) -> frozenset[str]:
    """Roles whose views must be copies that share no memory with the home: a stale call's
    view is filled before the train call that then updates the home in place, so a tensor (or
    hosted rows) shared with the home would hand the generation weights newer than the
    version it claims. Such a view is priced as a full copy: no hosting, nothing shared."""
    return frozenset(m.role for m in calls if m.name in stale_calls(calls, k))
