"""Decode-attention policies: which cached KV tokens each decode step attends (docs/policies.md).

One module per policy (`dense`, `oracle_topk`, `block_topk`, `strided_block_topk`, `sliding_window`) on the protocol of `base`;
`config.AttentionConfig` pairs a policy with how the engine runs it; `flags` holds the scripts' flags. Nothing
here imports jax at import time (the cost model and the scaling analysis use it without jax).
"""

from kinetics_jax.policies.base import REGISTRY, Policy, parse_policy, policy_from_fields, register
# The registration order (REGISTRY, and the kinds listed in messages and flag help): the baseline first.
from kinetics_jax.policies.dense import Dense
from kinetics_jax.policies.oracle_topk import OracleTopK
from kinetics_jax.policies.block_topk import BlockTopK
from kinetics_jax.policies.strided_block_topk import StridedBlockTopK
from kinetics_jax.policies.sliding_window import SlidingWindow
from kinetics_jax.policies.config import BACKENDS, AttentionConfig

__all__ = ["BACKENDS", "REGISTRY", "AttentionConfig", "BlockTopK", "Dense", "OracleTopK", "Policy",
           "SlidingWindow", "StridedBlockTopK", "parse_policy", "policy_from_fields", "register"]
