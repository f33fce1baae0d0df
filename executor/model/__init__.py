"""The decoder of Llama, Mistral, Qwen2 and Qwen3 models, shard-aware (TP slices, PP stage
ranges); see plans.layout."""

from executor.model.transformer import Transformer

__all__ = ["Transformer"]
