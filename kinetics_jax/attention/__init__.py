"""Decode attention as the engine runs it: the generic page lists the kernels read (`selection`), the dispatch
between dense, cascade and a policy's sparse step (`dispatch`), and the attention over a keep mask that the
policies' specifications use (`reference`). The policies themselves live in kinetics_jax.policies."""

from kinetics_jax.attention.dispatch import SharedPrefix, decode_attention, min_shared_pages, sparse_decode
from kinetics_jax.attention.reference import reference_decode

__all__ = ["SharedPrefix", "decode_attention", "min_shared_pages", "reference_decode", "sparse_decode"]
