"""Tree-structured sampling (arXiv 2502.x "tree-structured preference data"): what a tree of
responses generates, the one rule the estimator and the executor share.

A prompt's tree: the actor generates one response prefix; at each depth in `depths` (tokens
generated so far) every open branch splits into `branch` continuations that go on
independently (each split copies the KV cache of the shared prefix, which is generated once);
after the last split each branch runs to `gen_len`. The tree has branch ** len(depths) leaves,
each a full response; leaves of one prompt are consecutive rows, in depth-first order. With
`depths = [0]` the leaves share nothing but the prompt: independent samples (a chain-based
baseline), generated at the cost of independent sampling.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.errors import PlanError
from plans.strict import STRICT


class TreeSpec(BaseModel):
    """How the actor's tree of responses per prompt branches."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    branch: int = Field(2, ge=2, le=16, description="Continuations at each split.")
    depths: list[int] = Field(
        [4, 10],
        min_length=1,
        max_length=6,
        description="Generated-token counts at which every branch splits, strictly increasing, "
        "each below gen_len; [0] = independent samples.",
    )

    @model_validator(mode="after")
    def _increasing(self) -> TreeSpec:
        d = self.depths
        if d[0] < 0 or any(b <= a for a, b in zip(d, d[1:], strict=False)):
            raise PlanError(f"{list(d)} must be >= 0 and strictly increasing", field="depths")
        return self

    @property
    def leaves(self) -> int:
        return self.branch ** len(self.depths)

    def check(self, gen_len: int) -> None:
        if self.depths[-1] >= gen_len:
            raise PlanError(
                f"split at {self.depths[-1]} tokens leaves nothing to generate after it "
                f"(gen_len = {gen_len})",
                field="tree.depths",
            )

    def rows_at(self, t: int) -> int:
        """Open branches per prompt while token t (0-based) is generated and fed back."""
        return self.branch ** sum(1 for d in self.depths if d <= t)

    def tokens(self, gen_len: int) -> int:
        """Tokens generated per prompt: the shared prefixes once, then every branch's own."""
        return sum(self.rows_at(t) for t in range(gen_len))

    def peak_cache_rows(self, prompts: int) -> int:
        """KV-cache rows (each at full length) at the last split, where the parents' cache
        and its copy for the leaves both exist: prompts * (leaves + leaves / branch)."""
        return prompts * (self.leaves + self.leaves // self.branch)

    def pairs(self) -> int:
        """Leaf pairs per prompt that can be labelled (every two leaves)."""
        n = self.leaves
        return n * (n - 1) // 2
