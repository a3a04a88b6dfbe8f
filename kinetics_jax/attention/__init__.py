"""Decode attention: policies (which KV tokens a step reads), their pure-JAX specification, the page lists the
kernels read, and the dispatch between the XLA reference and the Pallas kernels."""

from kinetics_jax.attention.dispatch import decode_attention, sparse_decode
from kinetics_jax.attention.policies import AttentionConfig
from kinetics_jax.attention.reference import keep_mask, reference_decode

__all__ = ["AttentionConfig", "decode_attention", "keep_mask", "reference_decode", "sparse_decode"]
