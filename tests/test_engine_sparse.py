"""Sparse decode inside the full model: the engine (paged cache, page lists, kernels) against a contiguous-KV
decode loop that calls the reference policy, plus dense equality when the budget covers the sequence."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kinetics_jax as kj
from kinetics_jax.attention import reference_decode
from kinetics_jax.cache import PagedLayout
from kinetics_jax.model.attention import causal_attention
from kinetics_jax.sampling import SamplingConfig, generate
from kinetics_jax.sampling.decode import decode_step
from kinetics_jax.sampling.prefill import prefill
from kinetics_jax.policies import AttentionConfig, BlockTopK, OracleTopK, SlidingWindow, StridedBlockTopK

GREEDY = SamplingConfig.greedy_config()
BLOCK = AttentionConfig(BlockTopK(sink=4, local=0, block_size=16, block_topk=1))
POLICIES = [
    BLOCK,
    dataclasses.replace(BLOCK, backend="pallas", dense_layers=(0, 2)),
    AttentionConfig(BlockTopK(sink=5, local=7, block_size=16, block_topk=1, score="quest"), backend="pallas"),
    AttentionConfig(OracleTopK(sink=4, local=4, topk=8)),
    AttentionConfig(SlidingWindow(sink=4, local=12), backend="pallas", dense_layers=()),
    AttentionConfig(StridedBlockTopK(sink=5, local=3, block_size=8, block_topk=2)),
]


def _prompts(lengths, seed=0, vocab=160):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


@jax.jit
def _reference_prefill(model, ids):
    valid = jnp.ones(ids.shape, bool)

    def attend(q, k, v, layer, carry):
        return causal_attention(q, k, v, valid), carry, (k, v)

    positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
    _, _, ys = model.hidden_states(ids, positions, attend)
    return jnp.concatenate([y[0] for y in ys]), jnp.concatenate([y[1] for y in ys])  # [L, 1, T, Hkv, D]


@jax.jit(static_argnames="config")
def _reference_step(model, kv, token, n, config):
    """Feeds one token at position n - 1 over contiguous K/V [L, 1, T, Hkv, D]; reference policy attention."""
    dense = jnp.asarray(config.dense_layers or (-1,))

    def attend(q, k, v, layer, kv):
        keys, values = kv
        keys, values = keys.at[layer, 0, n - 1].set(k[0, 0]), values.at[layer, 0, n - 1].set(v[0, 0])
        args = (q[:, 0], keys[layer], values[layer], n[None])
        out = jnp.where(jnp.isin(layer, dense), reference_decode(*args, AttentionConfig()),
                        reference_decode(*args, config))
        return out[:, None], (keys, values), None

    hidden, kv, _ = model.hidden_states(token[None, None], (n - 1)[None, None], attend, kv)
    return model.logits(hidden[0, 0]), kv


def _reference_logits(model, prompt, continuation, config):
    """Logits after each fed continuation token, from the contiguous reference loop."""
    k, v = _reference_prefill(model, jnp.asarray([prompt]))
    pad = ((0, 0), (0, 0), (0, len(continuation)), (0, 0), (0, 0))
    kv = (jnp.pad(k, pad), jnp.pad(v, pad))
    out = []
    for step, token in enumerate(continuation):
        logits, kv = _reference_step(model, kv, jnp.int32(token), jnp.int32(len(prompt) + step + 1), config)
        out.append(np.asarray(logits))
    return out


@pytest.mark.parametrize("config", POLICIES, ids=AttentionConfig.describe)
def test_engine_matches_reference_policy_loop(config, hf_checkpoints):
    """Teacher-forced: prefill, then decode_step token by token through the paged cache (2 samples per prompt,
    so prompt pages are shared); every step's logits match the contiguous reference loop, and the counters
    record the tokens each layer attended."""
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32)
    lengths, new, n = [11, 23], 30, 2
    prompts = _prompts(lengths, seed=2)
    plan = PagedLayout.of(config).plan(lengths, n, new)
    padded = np.zeros((2, 32), np.int32)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = p
    _, cache = prefill(model, jnp.asarray(padded), jnp.asarray(lengths), jnp.asarray(plan.prefill_writes(32)),
                       plan.num_pages, config)
    continuation = np.random.default_rng(3).integers(0, 160, (4, new - 1))
    expect = [_reference_logits(model, prompts[b // n], continuation[b].tolist(), config) for b in range(4)]
    step_fn = jax.jit(decode_step, static_argnames=("attention", "num_samples"))
    shared = jnp.asarray(plan.shared_pages_per_prompt)
    for step in range(new - 1):
        positions = np.repeat(lengths, n) + step
        logits, cache, counts = step_fn(model, cache, jnp.asarray(continuation[:, step], jnp.int32),
                                        jnp.asarray(positions, jnp.int32), jnp.asarray(plan.page_table),
                                        jnp.ones(4, bool), attention=config, num_samples=n, shared_pages=shared)
        for b in range(4):
            # float32 on both paths, different summation orders (pages, online softmax): ~1e-6 in practice.
            np.testing.assert_allclose(np.asarray(logits[b]), expect[b][step], atol=1e-4, rtol=0,
                                       err_msg=f"step {step}, sequence {b}")
        attended = [_attended(config, layer, positions + 1) for layer in range(4)]
        np.testing.assert_array_equal(np.asarray(counts).sum(axis=1), attended)  # counts [L, B]


def _attended(config: AttentionConfig, layer: int, lengths: np.ndarray) -> int:
    """KV tokens a layer attends, summed over sequences, from the policy's definition."""
    if layer in config.dense_layers:
        return int(lengths.sum())
    total = 0
    for n in lengths:
        if config.policy.kind == "block_topk":
            n_full = max(n - config.policy.local - config.policy.sink, 0) // config.policy.block_size
            total += n - max(n_full - config.policy.block_topk, 0) * config.policy.block_size
        elif config.policy.kind == "strided_block_topk":  # 2 x block_topk half-block pages kept once active
            stride = config.policy.block_size // 2
            n_full = max(n - config.policy.local - config.policy.sink, 0) // stride
            total += n - max(n_full - 2 * config.policy.block_topk, 0) * stride
        else:
            total += min(n, config.policy.budget)
    return total


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_block_topk_covering_the_sequence_gives_dense_tokens(backend, hf_checkpoints):
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32)
    prompts = _prompts([9, 30], seed=4)
    dense = generate(model, prompts, num_samples=2, max_new_tokens=40, sampling=GREEDY,
                     attention=AttentionConfig(backend=backend))
    wide = AttentionConfig(BlockTopK(block_topk=5), dense_layers=(), backend=backend)  # 4 + 80 >= 70
    sparse = generate(model, prompts, num_samples=2, max_new_tokens=40, sampling=GREEDY, attention=wide)
    np.testing.assert_array_equal(sparse.tokens, dense.tokens)
    np.testing.assert_array_equal(sparse.attended_tokens, dense.attended_tokens)


def test_sparse_generate_attends_its_budget(hf_checkpoints):
    """With a small budget the sparse layers attend sink + blocks + local; the dense layer everything."""
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32)
    prompts = _prompts([50], seed=6)
    result = generate(model, prompts, max_new_tokens=20, sampling=GREEDY, attention=BLOCK)
    for step, row in enumerate(result.attended_tokens):
        n = 50 + step + 1
        assert row[0] == n
        assert (row[1:] == _attended(BLOCK, 1, np.asarray([n]))).all()
        assert (row[1:] <= BLOCK.policy.budget + BLOCK.policy.block_size - 1).all()
