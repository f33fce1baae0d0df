"""A measured-looking Profile for tests, with round roofline figures."""

from __future__ import annotations

from estimator.profile import Profile, Roofline


def measured_profile(id: str = "test", memory: float = 1e12, inter: float = 1e8, **fields):
    """A CPU Profile of kind "measured" holding `fields` (ops, collectives, contention, ...);
    roofline: 1e11 FLOP/s, `memory` bytes/s, 1e9 bytes/s inside a node, `inter` between."""
    roof = Roofline(
        flops_per_s=1e11,
        memory_bytes_per_s=memory,
        intra_node_bytes_per_s=1e9,
        inter_node_bytes_per_s=inter,
    )
    return Profile(kind="measured", id=id, device="cpu", roofline=roof, **fields)
