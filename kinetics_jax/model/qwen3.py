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

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kinetics_jax.config import LayerSegment, Qwen3Config
from kinetics_jax.model.attention import Attention, causal_attention
from kinetics_jax.model.layers import DType, DenseMLP, Embedding, RMSNorm, param
from kinetics_jax.model.moe import MoE
from kinetics_jax.sharding.axes import EMBED, LAYERS, VOCAB


AttendFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, Any], tuple[jax.Array, Any, Any]]
"""attend(q [B, T, Hq, D], k [B, T, Hkv, D], v, layer (int32 scalar, global index), carry) -> (attention output
[B, T, Hq, D], new carry, per-layer output y). The one hook through which every attention implementation (causal
prefill, cached decode, sparse policies) runs inside the scanned layers: the carry threads state such as the KV
cache through the layers, and the ys come back stacked per layer."""


class DecoderLayer(nnx.Module):
    def __init__(self, config: Qwen3Config, *, moe: bool, dtype: DType, param_dtype: DType, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(config.hidden_size, EMBED, eps=config.rms_norm_eps, **kw)
        self.self_attn = Attention(config, **kw)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, EMBED, eps=config.rms_norm_eps, **kw)
        self.mlp = MoE(config, **kw) if moe else DenseMLP(config.hidden_size, config.intermediate_size, **kw)

    def __call__(self, x: jax.Array, positions: jax.Array, attend: AttendFn, layer: jax.Array, carry: Any
                 ) -> tuple[jax.Array, Any, Any]:
        """x: [B, T, hidden], positions: int[B, T] -> (x [B, T, hidden], carry, y) (see AttendFn)."""
        q, k, v = self.self_attn.project_qkv(self.input_layernorm(x), positions)
        out, carry, y = attend(q, k, v, layer, carry)
        x = x + self.self_attn.project_out(out)
        return x + self.mlp(self.post_attention_layernorm(x)), carry, y


class LayerStack(nnx.Module):
    """`segment.count` decoder layers of one kind with parameters stacked on a leading "layers" axis.

    The forward pass is a `lax.scan` over the stack, so compile time does not grow with depth. Setting
    `unroll = True` runs the layers in a Python loop instead (XLA's cost analysis counts a loop body once, so
    cost counting unrolls; each layer's index is then known while tracing).
    """

    def __init__(self, config: Qwen3Config, segment: LayerSegment, *, dtype: DType, param_dtype: DType,
                 rngs: nnx.Rngs):
        @nnx.split_rngs(splits=segment.count)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
        def make(layer_rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, moe=segment.moe, dtype=dtype, param_dtype=param_dtype, rngs=layer_rngs)

        self.layer = make(rngs)
        self.start, self.count = segment.start, segment.count
        self.unroll = False

    def __call__(self, x: jax.Array, positions: jax.Array, attend: AttendFn, carry: Any
                 ) -> tuple[jax.Array, Any, Any]:
        """Runs the stacked layers in order: (x, carry, ys stacked over this segment's layers)."""
        graphdef, stacked = nnx.split(self.layer)

        def body(state: tuple[jax.Array, Any], xs: tuple[nnx.State, jax.Array]):
            (h, c), (layer_state, layer) = state, xs
            h, c, y = nnx.merge(graphdef, layer_state)(h, positions, attend, layer, c)
            return (h, c), y

        if not self.unroll:
            layers = self.start + jnp.arange(self.count, dtype=jnp.int32)
            (x, carry), ys = jax.lax.scan(body, (x, carry), (stacked, layers))
            return x, carry, ys
        outputs = []  # unrolled: a Python loop, so each layer's index is known while tracing
        for i in range(self.count):
            (x, carry), y = body((x, carry), (jax.tree.map(lambda a: a[i], stacked), np.int32(self.start + i)))
            outputs.append(y)
        return x, carry, jax.tree.map(lambda *a: jnp.stack(a), *outputs)


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

    def hidden_states(self, input_ids: jax.Array, positions: jax.Array, attend: AttendFn, carry: Any = None
                      ) -> tuple[jax.Array, Any, list[Any]]:
        """Final-norm hidden states [B, T, hidden] for input_ids int[B, T], attention through `attend`.

        Returns (hidden, final carry, [ys of each layer segment, stacked over its layers]).
        """
        x = self.embed_tokens(input_ids)
        ys = []
        for block in self.blocks:
            x, carry, y = block(x, positions, attend, carry)
            ys.append(y)
        return self.norm(x), carry, ys

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

        def attend(q, k, v, layer, carry):
            return causal_attention(q, k, v, valid), carry, None

        hidden, _, _ = self.hidden_states(input_ids, positions, attend)
        return self.logits(hidden)
