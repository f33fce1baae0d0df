"""How much a call slows down while the other devices of its node compute.

On a CPU node the workers are cores of one processor: they share caches and memory bandwidth
(and on a virtual machine may be two threads of one physical core), so a call that runs while
another worker computes takes longer than the op timings, measured one process at a time,
say. The simulator (estimator.simulate) stretches a call's compute seconds by
`1 + contention x busy`, busy being the share of the node's other devices computing while it
runs (its own other ranks count).

The factor comes from the profile: measured (`Profile.contention`: whole passes of preset
models timed alone and next to a busy worker, per call kind; a model between two timed ones
is interpolated in log parameters, outside them the nearest is taken), or, in a calibrated profile
(`rlhf-plan profile --from-run`), the calibration's: its other factors were fitted next to that
value (0 where the runs could not determine it), so the measured one no longer applies. GPU
profiles have neither: a GPU computes alone.
"""

from __future__ import annotations

import math

from estimator.lookup import bracket
from estimator.profile import Profile


def contention_factor(profile: Profile, kind: str, params: float) -> float:
    """The extra share of compute seconds of a `kind` call ("generate", "inference",
    "train") of a model with `params` parameters when the rest of its node is busy."""
    cal = profile.calibration
    if cal is not None:  # its factors were fitted with this contention (0 if not fitted)
        return cal.contention
    pts = sorted(
        (math.log(t.params), max(t.together_s / t.alone_s - 1.0, 0.0))
        for t in profile.contention
        if t.kind == kind
    )
    if not pts:
        return 0.0
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    i, f = bracket(xs, min(max(math.log(max(params, 1.0)), xs[0]), xs[-1]))
    return ys[i] if f == 0.0 else ys[i] + (ys[i + 1] - ys[i]) * f
