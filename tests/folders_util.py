"""Tiny Hugging Face model folders for tests that only need valid files, not real weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from plans.layout import param_slices
from plans.model import ModelSpec


def write_zero_weights(folder: Path, spec: ModelSpec) -> Path:
    """model.safetensors with every tensor the loader reads, zero-filled, in the shapes
    plans.layout expects for `spec` (numpy, so no torch import)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        sl.source: np.zeros(sl.full_shape, np.float32)
        for sl in param_slices(spec, 1, 0, 1, 0)
        if sl.source == sl.name
    }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
