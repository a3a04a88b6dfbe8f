"""Logit parity of the NNX port with live transformers, padding, logical axes, and scan compile time."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import kinetics_jax as kj
from conftest import TINY_CONFIGS, build_hf_model, hf_config_dict, save_hf


def _random_ids(vocab: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def _hf_logits(model: torch.nn.Module, ids: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long), **kwargs).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_float32_logits_match_transformers(name, hf_checkpoints, hf_models):
    model = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    ids = _random_ids(model.config.vocab_size, (3, 37), seed=1)
    ours = np.asarray(model(jnp.asarray(ids)))
    ref = _hf_logits(hf_models[name], ids)
    # float32 end to end: differences are summation-order rounding, orders of magnitude below 1e-4.
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= 1e-4


@pytest.mark.parametrize("name", ["dense_g4_sharded", "moe_mixed_sharded"])
def test_padded_batch_matches_unpadded_sequences(name, hf_checkpoints, hf_models):
    """Left- and right-padded rows give the logits each sequence has alone (and transformers agrees)."""
    model = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    lengths, width = [40, 33, 21], 40
    seqs = [_random_ids(model.config.vocab_size, (1, n), seed=10 + n)[0] for n in lengths]
    for side in ("left", "right"):
        ids = np.zeros((3, width), np.int32)
        mask = np.zeros((3, width), np.int32)
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, span], mask[row, span] = seq, 1
        batched = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        ref = _hf_logits(hf_models[name], ids, attention_mask=torch.as_tensor(mask),
                         position_ids=torch.as_tensor(positions, dtype=torch.long))
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            alone = np.asarray(model(jnp.asarray(seq[None])))[0]
            np.testing.assert_allclose(batched[row, span], alone, atol=1e-4, rtol=0)
            np.testing.assert_allclose(batched[row, span], ref[row, span], atol=1e-4, rtol=0)


def _confident_hf_model(name: str) -> torch.nn.Module:
    """A tiny random model whose predictions have real margins: lm_head scaled x30. A random model's top-2 logits
    are often closer than bf16 rounding noise (transformers' own bf16 and fp32 runs then disagree on ~4% of
    argmaxes); scaling the output projection widens the margins without touching the layers under test."""
    model = build_hf_model(TINY_CONFIGS[name], seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


@pytest.mark.parametrize("name", ["dense_untied_g1", "moe_norm_topk"])
def test_bfloat16_logits_match_transformers_bfloat16(name, tmp_path):
    hf32 = _confident_hf_model(name)
    path = save_hf(hf32, str(tmp_path / name))
    hf16 = _confident_hf_model(name).to(torch.bfloat16)
    ids = _random_ids(TINY_CONFIGS[name]["vocab_size"], (4, 48), seed=2)
    ref32, ref16 = _hf_logits(hf32, ids), _hf_logits(hf16, ids)
    model = kj.load_hf_checkpoint(path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    ours = np.asarray(model(jnp.asarray(ids)), np.float32)
    # Tolerance: two bf16 implementations differ by rounding order only, so our distance to transformers-bf16
    # must be of the same order as transformers' own bf16 error against float32 (bf16 keeps 8 mantissa bits,
    # ~0.4% relative per op, compounding over layers). Allow 2x that error, plus 2 bf16 ulps of the logit scale.
    hf_bf16_error = np.max(np.abs(ref16 - ref32))
    scale = np.max(np.abs(ref32))
    assert np.max(np.abs(ours - ref16)) <= 2 * hf_bf16_error + 2 * scale * 2.0 ** -8
    assert np.max(np.abs(ours - ref32)) <= 2 * hf_bf16_error + 2 * scale * 2.0 ** -8
    agreement = np.mean(ours.argmax(-1) == ref16.argmax(-1))
    assert agreement >= 0.99, agreement


def test_every_parameter_has_logical_axes():
    config = kj.Qwen3Config.from_hf_config(hf_config_dict("moe_mixed_sharded"))
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))
    known = {"embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "experts", "layers"}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata()["out_sharding"]
        assert len(axes) == var.get_value().ndim, path
        assert set(axes) <= known, (path, axes)
        assert (axes[0] == "layers") == (path[0] == "blocks"), (path, axes)


def test_tied_model_has_no_lm_head_and_uses_embedding():
    config = kj.Qwen3Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))
    assert model.lm_head is None
    hidden = jnp.ones((1, 1, 16))
    np.testing.assert_allclose(model.logits(hidden), hidden @ model.embed_tokens.embedding[...].T, rtol=1e-6)


def _compile_seconds(layers: int) -> float:
    config = kj.Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))))

    @jax.jit
    def forward(state, ids):
        return nnx.merge(graphdef, state)(ids)

    ids = jax.ShapeDtypeStruct((1, 64), jnp.int32)
    start = time.perf_counter()
    forward.lower(state, ids).compile()
    return time.perf_counter() - start


def test_compile_time_does_not_grow_with_depth():
    _compile_seconds(2)  # warm up tracing caches
    shallow, deep = _compile_seconds(4), _compile_seconds(28)
    # Layers are scanned: 7x the depth must not cost anything like 7x the compile time.
    assert deep < 2.0 * shallow + 0.5, (shallow, deep)
