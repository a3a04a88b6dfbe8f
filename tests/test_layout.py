"""Canonical per-layer keys: derived from the model, and assemble() inverts iter_canonical()."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kinetics_jax import Qwen3Config, Qwen3ForCausalLM
from kinetics_jax.checkpoint import layout

CONFIG = Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=3, num_experts_per_tok=2,
                     moe_intermediate_size=8, decoder_sparse_step=2, tie_word_embeddings=True)


def test_canonical_keys_cover_every_layer_once():
    shapes = layout.canonical_shapes(CONFIG)
    assert "lm_head" not in shapes  # tied
    assert shapes["layers.0.mlp.gate_proj"] == (16, 24)          # dense layer 0
    assert shapes["layers.1.mlp.gate_proj"] == (3, 16, 8)        # MoE layer 1
    assert shapes["layers.3.self_attn.q_proj"] == (4, 8, 16)  # [heads, head_dim, embed]
    assert {layout.write_group(k) for k in shapes} == {"embed_tokens.embedding", "norm.scale", "layers.0",
                                                       "layers.1", "layers.2", "layers.3"}


def test_assemble_inverts_iter_canonical():
    model = Qwen3ForCausalLM(CONFIG, rngs=nnx.Rngs(1))
    arrays = dict(layout.iter_canonical(model))
    assert arrays.keys() == layout.canonical_shapes(CONFIG).keys()

    def read(keys, target, stacked):
        values = [arrays[k].astype(target.dtype) for k in keys]
        return jnp.stack(values) if stacked else values[0]

    rebuilt = layout.assemble(CONFIG, read, dtype=jnp.float32, param_dtype=jnp.float32)
    ids = jnp.asarray(np.arange(10)[None] % 32, jnp.int32)
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(rebuilt(ids)))
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(nnx.state(rebuilt))
