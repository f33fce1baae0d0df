"""LLaMA-family transformer, shard-aware (TP slices, PP stage ranges); see plans.layout."""

from executor.model.transformer import Transformer

__all__ = ["Transformer"]
