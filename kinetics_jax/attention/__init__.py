"""Decode attention: policies (which KV tokens a step reads) and their implementations."""

from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.attention.reference import paged_dense_attention

__all__ = ["AttentionConfig", "paged_dense_attention"]
