"""Qwen3 / Qwen3-MoE causal language model in Flax NNX.

Layout of the parameters (each array carries logical axis names; stacked layers add a leading "layers" axis):

    embed_tokens.embedding           [vocab, embed]
    blocks[s].layer.<decoder layer>  one LayerStack per LayerSegment s of the config, scanned with lax.scan
    norm.scale                       [embed]
    lm_head                          [embed, vocab]   (absent when tie_word_embeddings: embedding^T is used)

Decoder layer (pre-norm):  x += attn(input_layernorm(x));  x += mlp_or_moe(post_attention_layernorm(x)).

Padding story for batches of different lengths: pass `attention_mask` int/bool[B, T] (1 = real token) with the
padding on either side. Padding keys are never attended. Positions default to the number of real tokens
before each token (`cumsum(mask) - 1`), so a left-padded prompt gets positions 0..n-1 exactly like an unpadded
one; pass `positions` to override. Logits at padding positions are meaningless.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kinetics_jax.config import LayerSegment, Qwen3Config
from kinetics_jax.model.attention import Attention
from kinetics_jax.model.layers import DType, DenseMLP, EMBED, Embedding, LAYERS, RMSNorm, VOCAB, param
from kinetics_jax.model.moe import MoE


class DecoderLayer(nnx.Module):
    def __init__(self, config: Qwen3Config, *, moe: bool, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(config.hidden_size, EMBED, eps=config.rms_norm_eps, **kw)
        self.self_attn = Attention(config, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, EMBED, eps=config.rms_norm_eps, **kw)
        self.mlp = MoE(config, **kw) if moe else DenseMLP(config.hidden_size, config.intermediate_size, **kw)

    def __call__(self, x: jax.Array, positions: jax.Array, valid: jax.Array) -> jax.Array:
        """x: [B, T, hidden] -> [B, T, hidden]."""
        x = x + self.self_attn(self.input_layernorm(x), positions, valid)
        return x + self.mlp(self.post_attention_layernorm(x))


class LayerStack(nnx.Module):
    """`segment.count` decoder layers of one kind with parameters stacked on a leading "layers" axis.

    The forward pass is a `lax.scan` over the stack, so compile time does not grow with depth.
    """

    def __init__(self, config: Qwen3Config, segment: LayerSegment, *, dtype: DType, param_dtype: DType,
                 rngs: nnx.Rngs):
        @nnx.split_rngs(splits=segment.count)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
        def make(layer_rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, moe=segment.moe, dtype=dtype, param_dtype=param_dtype, rngs=layer_rngs)

        self.layer = make(rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, valid: jax.Array) -> jax.Array:
        graphdef, stacked = nnx.split(self.layer)

        def body(h: jax.Array, layer_state: nnx.State) -> tuple[jax.Array, None]:
            return nnx.merge(graphdef, layer_state)(h, positions, valid), None

        x, _ = jax.lax.scan(body, x, stacked)
        return x


class Qwen3ForCausalLM(nnx.Module):
    """Qwen3 causal LM. `dtype` is the compute dtype, `param_dtype` the storage dtype of the parameters."""

    def __init__(self, config: Qwen3Config, *, dtype: DType = jnp.float32, param_dtype: DType = jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                      rngs=rngs)
        self.blocks = nnx.List([
            LayerStack(config, segment, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for segment in config.layer_segments()])
        self.norm = RMSNorm(config.hidden_size, EMBED, eps=config.rms_norm_eps, dtype=dtype,
                            param_dtype=param_dtype, rngs=rngs)
        self.lm_head = (None if config.tie_word_embeddings else
                        param(rngs, (config.hidden_size, config.vocab_size), (EMBED, VOCAB), param_dtype))

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array, valid: jax.Array) -> jax.Array:
        """Final-norm hidden states [B, T, hidden] for input_ids int[B, T]."""
        x = self.embed_tokens(input_ids)
        for block in self.blocks:
            x = block(x, positions, valid)
        return self.norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [..., hidden] -> float32 logits [..., vocab] (all vocab_size rows, padding ids included)."""
        if self.lm_head is None:
            kernel = self.embed_tokens.embedding[...].astype(self.dtype).T
        else:
            kernel = self.lm_head[...].astype(self.dtype)
        return jnp.matmul(hidden, kernel, preferred_element_type=jnp.float32)

    def __call__(self, input_ids: jax.Array, *, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """input_ids int[B, T] -> logits float32[B, T, vocab], causal. See the module docstring for padding."""
        valid = (jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask.astype(bool))
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
        return self.logits(self.hidden_states(input_ids, positions, valid))
