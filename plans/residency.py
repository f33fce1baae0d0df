"""Where a role's weights live while an iteration runs: the rules rlhf-run follows and the
estimator's simulator replays, written once.

- A call's *layout* is what decides which shards a rank holds: mesh, dp, tp, pp
  (micro-batches and ZeRO-1 do not).
- A role's *home* is the layout of its train call, else of its first call. The home holds
  the weights (and the optimizer) for the whole run.
- A call in another layout gets a *view*: a copy reallocated from home, kept until the role is
  needed in yet another layout or its weights change (after its train call), then dropped.
  Its memory is kept for the next view in the same layout.
- A role may *host* its home rows inside its view (tp shrinks on the same rank: the view's
  tensor contains the home's rows, which then live there and are never copied again) only
  when it has exactly one view layout (with two, the first view's tensors would stay
  allocated while the second exists), its home is not ZeRO-1 (its optimizer keeps views of
  the parameters' memory) and its calls do not sample with stale weights (plans.staleness:
  a staged view must keep its version while the home trains).
- A rule reward (`experiment.reward_function`) stands in for a reward role whose calls are
  all inference: that role's weights are never loaded, it has no views and no memory.
- Every call's outputs go to its *consumers*: the calls that read one of its keys.

`Residency.of(experiment, allocations)` evaluates these rules for one plan; the runtime
(executor.runtime) builds its models from it and the simulator (estimator.simulate) replays
moves and memory from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from plans.algorithms import MFC, Calls, mfcs
from plans.allocation import Allocation
from plans.experiment import ExperimentSpec
from plans.staleness import private_view_roles

Layout = tuple
"""(mesh, dp, tp, pp): what `layout_key` returns."""


def layout_key(alloc: Allocation) -> Layout:
    """What decides which shards a rank holds (micro-batches and ZeRO-1 do not)."""
    s = alloc.strategy
    return alloc.mesh, s.dp, s.tp, s.pp


@lru_cache(maxsize=64)
def home_calls(calls_or_algorithm: Calls) -> dict[str, str]:
    """Role -> the call whose layout is its home: its train call, else its first call."""
    calls = mfcs(calls_or_algorithm)
    home: dict[str, str] = {}
    for m in calls:
        if m.role not in home:
            home[m.role] = next(
                (c for c in calls if c.role == m.role and c.kind == "train"), m
            ).name
    return home


@lru_cache(maxsize=64)
def consumers(calls_or_algorithm: Calls) -> dict[str, tuple[str, ...]]:
    """Call -> the calls that read one of its outputs, in canonical order (the push order)."""
    calls = mfcs(calls_or_algorithm)
    return {m.name: tuple(c.name for c in calls if set(m.outputs) & set(c.inputs)) for m in calls}


def rule_replaces(exp: ExperimentSpec, role: str) -> bool:
    """Whether a rule reward stands in for `role`: its weights are never read."""
    calls = [m for m in exp.mfcs() if m.role == role]
    return (
        exp.reward_function is not None
        and role == "reward"
        and all(m.kind == "inference" for m in calls)
    )


def rule_call(exp: ExperimentSpec, mfc: MFC) -> bool:
    """Whether a rule scores this call's sequences instead of the role's model."""
    return mfc.kind == "inference" and rule_replaces(exp, mfc.role)


@dataclass(frozen=True)
class Residency:
    """The residency rules evaluated for one plan's allocations."""

    home: Mapping[str, str]
    """Role -> its home call."""
    layouts: Mapping[str, Layout]
    """Call -> its layout."""
    loaded: frozenset[str]
    """Roles whose weights exist (all but one a rule reward stands in for)."""
    hosting: frozenset[str]
    """Roles whose home rows may live inside their (single) view."""
    consumers: Mapping[str, tuple[str, ...]]
    private: frozenset[str] = frozenset()
    """Roles whose views share no memory with the home (plans.staleness.private_view_roles)."""

    @classmethod
    def of(
        cls, exp: ExperimentSpec, allocations: Mapping[str, Allocation], staleness: int = 0
    ) -> Residency:
        """The rules for one plan; `staleness` is its max_staleness."""
        calls = exp.mfcs()
        home = home_calls(calls)
        private = private_view_roles(calls, staleness)
        layouts = {m.name: layout_key(allocations[m.name]) for m in calls}
        views: dict[str, set[Layout]] = {}
        for m in calls:
            if layouts[m.name] != layouts[home[m.role]]:
                views.setdefault(m.role, set()).add(layouts[m.name])
        hosting = {
            role
            for role, ls in views.items()
            if len(ls) == 1 and not allocations[home[role]].strategy.zero1 and role not in private
        }
        roles = {m.role for m in calls}
        loaded = {r for r in roles if not rule_replaces(exp, r)}
        hosting &= loaded
        return cls(home, layouts, frozenset(loaded), frozenset(hosting), consumers(calls), private)

    def home_layout(self, role: str) -> Layout:
        return self.layouts[self.home[role]]

    def is_view(self, call: MFC) -> bool:
        """Whether the call runs its role's model outside the home layout."""
        return call.role in self.loaded and self.layouts[call.name] != self.home_layout(call.role)

    def move_before(self, view: Layout | None, call: MFC) -> bool:
        """Whether the role's weights are reallocated before `call`, given the view the role
        holds (`view`, None for none): a view call whose layout is not held yet."""
        return self.is_view(call) and view != self.layouts[call.name]

    def view_after(self, view: Layout | None, call: MFC) -> Layout | None:
        """The view the role holds after `call` (None: only the home)."""
        if call.kind == "train":
            return None  # its weights changed: the view is stale and dropped
        return self.layouts[call.name] if self.is_view(call) else view

    def steady_views(self, calls: list[MFC]) -> dict[str, Layout | None]:
        """Role -> the view it holds after one iteration of `calls` from none (what every
        later iteration starts with)."""
        view: dict[str, Layout | None] = {}
        for m in calls:
            view[m.role] = self.view_after(view.get(m.role), m)
        return view
