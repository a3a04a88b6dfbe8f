"""MoE routing and sort-based dispatch against a float64 per-token, per-expert loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kinetics_jax import Qwen3Config
from kinetics_jax.model.moe import MoE


@pytest.mark.parametrize("normalize,top_k", [(True, 2), (False, 3), (True, 1)])
def test_moe_matches_float64_loop(normalize, top_k):
    config = Qwen3Config(vocab_size=8, hidden_size=24, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_experts=5,
                         num_experts_per_tok=top_k, moe_intermediate_size=12, norm_topk_prob=normalize)
    moe = MoE(config, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(4))
    x = np.random.default_rng(5).normal(size=(3, 7, 24)).astype(np.float32)
    router, gate, up, down = (np.asarray(p[...], np.float64)
                              for p in (moe.router, moe.gate_proj, moe.up_proj, moe.down_proj))
    ref = np.zeros((21, 24))
    for n, token in enumerate(x.reshape(-1, 24).astype(np.float64)):
        logits = token @ router
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        chosen = np.argsort(-probs)[:top_k]
        weights = probs[chosen] / (probs[chosen].sum() if normalize else 1.0)
        for e, w in zip(chosen, weights):
            a = token @ gate[e]
            ref[n] += w * ((a / (1 + np.exp(-a)) * (token @ up[e])) @ down[e])
    ours = np.asarray(moe(jnp.asarray(x))).reshape(-1, 24)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
