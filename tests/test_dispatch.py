"""sparse_decode (both backends) and the engine's decode_attention (dense, cascade) against float64 policies."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import policy_numpy
from lowering import MARKERS, export_mlir
from kinetics_jax import Qwen3Config
from kinetics_jax.attention import SharedPrefix, decode_attention, sparse_decode
from kinetics_jax.cache import KVCache, PagedLayout
from kinetics_jax.policies import AttentionConfig, BlockTopK, OracleTopK, SlidingWindow

BLOCK = AttentionConfig(BlockTopK(sink=4, local=0, block_size=16, block_topk=2))
CASES = [
    (AttentionConfig(), [1, 2, 4, 8]),
    (BLOCK, [1, 2, 4, 8]),
    (AttentionConfig(BlockTopK(sink=7, local=5, block_size=16, block_topk=3, score="quest")), [4]),
    (AttentionConfig(BlockTopK(sink=4, local=0, block_size=8, block_topk=5)), [2]),  # the paper's blocks
    (AttentionConfig(SlidingWindow(sink=4, local=21)), [2]),
    (AttentionConfig(OracleTopK(sink=4, local=3, topk=20)), [2]),
]


def _inputs(seed: int, group: int, dtype, t: int = 101, hkv: int = 2, d: int = 32):
    rng = np.random.default_rng(seed)
    lengths = np.array([t, 70, 37, 3], np.int32)  # not multiples of 16; one below every activation threshold
    q = rng.normal(size=(4, hkv * group, d)).astype(np.float32)
    k, v = (rng.normal(size=(4, t, hkv, d)).astype(np.float32) for _ in range(2))
    for b, n in enumerate(lengths):  # poison: tokens past a sequence's length must never be read
        k[b, n:], v[b, n:] = np.nan, np.nan
    return [jnp.asarray(a, dtype) for a in (q, k, v)] + [jnp.asarray(lengths)], (q, k, v, lengths)


# every case on both backends, except the oracle top-k: it has no kernel (AttentionConfig refuses it)
BACKEND_CASES = [(config, groups, backend) for config, groups in CASES for backend in ("xla", "pallas")
                 if not (config.policy.kind == "topk" and backend == "pallas")]


@pytest.mark.parametrize("config,groups,backend", BACKEND_CASES,
                         ids=[f"{c.describe()}-{b}" for c, _, b in BACKEND_CASES])
def test_sparse_decode_float32_matches_float64_policy(config, groups, backend):
    for group in groups:
        args, (q, k, v, lengths) = _inputs(group, group, jnp.float32)
        out = np.asarray(sparse_decode(*args, dataclasses.replace(config, backend=backend)))
        assert np.isfinite(out).all()
        for b, n in enumerate(lengths):
            kept = policy_numpy.keep(q[b], np.nan_to_num(k[b]), int(n), **config.policy.to_fields())
            expect = policy_numpy.attend(q[b], k[b], v[b], kept)
            # float32 scores / online softmax over <= 101 tokens vs float64: relative error ~1e-6.
            np.testing.assert_allclose(out[b], expect, rtol=1e-5, atol=1e-5, err_msg=f"group {group}, seq {b}")


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_sparse_decode_bfloat16(backend):
    args, (q, k, v, lengths) = _inputs(5, 4, jnp.bfloat16)
    out = np.asarray(sparse_decode(*args, dataclasses.replace(BLOCK, backend=backend)).astype(jnp.float32))
    q, k, v = (np.asarray(a.astype(jnp.float32)) for a in args[:3])  # the bf16-rounded inputs, in float64
    for b, n in enumerate(lengths):
        kept = policy_numpy.keep(q[b], np.nan_to_num(k[b]), int(n), **BLOCK.policy.to_fields())
        # bf16 keeps 8 mantissa bits: probabilities and the output are rounded to ~2^-8 = 0.4% of their size,
        # on outputs of magnitude <= ~1 (averages of unit normals): atol 2e-2 covers a few roundings.
        np.testing.assert_allclose(out[b], policy_numpy.attend(q[b], k[b], v[b], kept), atol=2e-2)


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_budget_covering_the_sequence_equals_dense(backend):
    args, _ = _inputs(7, 2, jnp.float32)
    dense = sparse_decode(*args, AttentionConfig(backend=backend))
    for config in (AttentionConfig(dataclasses.replace(BLOCK.policy, block_topk=7)), AttentionConfig(SlidingWindow(local=97))):
        np.testing.assert_allclose(np.asarray(sparse_decode(*args, dataclasses.replace(config, backend=backend))), np.asarray(dense),
                                   rtol=1e-6, atol=1e-6)


def _filled_cache(lengths: list[int], num_samples: int, new: int, config: Qwen3Config, offset: int):
    """A cache laid out by the plan of a request, filled with random K/V for every stored position, and the
    contiguous K/V of each sequence. Pages the plan does not use hold NaN."""
    layout = PagedLayout(16, offset)
    plan = layout.plan(lengths, num_samples, new)
    rng = np.random.default_rng(0)
    hkv, d, layers = config.num_key_value_heads, config.head_dim, config.num_hidden_layers
    b = len(lengths) * num_samples
    total = max(lengths) + new
    ck, cv = (rng.normal(size=(layers, b, total, hkv, d)).astype(np.float32) for _ in range(2))
    for s in range(1, b):  # samples share their prompt: the shared tokens are the first sample's
        if s % num_samples:
            p = s // num_samples
            ck[:, s, :lengths[p]], cv[:, s, :lengths[p]] = ck[:, s - 1, :lengths[p]], cv[:, s - 1, :lengths[p]]
    stored = np.repeat(lengths, num_samples) + new - 1
    cache, _ = layout.from_contiguous(jnp.asarray(ck), jnp.asarray(cv), jnp.asarray(stored), plan)
    ones = jnp.ones(ck.shape, jnp.float32)
    written = layout.from_contiguous(ones, ones, jnp.asarray(stored), plan)[0].k > 0  # the slots holding a token
    cache = cache._replace(k=jnp.where(written, cache.k, np.nan), v=jnp.where(written, cache.v, np.nan))
    return plan, cache, ck, cv


@pytest.mark.parametrize("num_samples", [1, 3])
def test_decode_attention_dense_and_cascade_pallas(num_samples):
    """Dense Pallas decode (the cascade when samples share prompt pages) on a planned cache, layer 1."""
    config = Qwen3Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32)
    prompt_lengths, new = [37, 16, 5], 30
    plan, cache, ck, cv = _filled_cache(prompt_lengths, num_samples, new, config, offset=0)
    b = len(prompt_lengths) * num_samples
    lengths = np.repeat(prompt_lengths, num_samples) + np.arange(b) % 7 + 1  # mid-decode, different per sample
    q = np.random.default_rng(1).normal(size=(b, 8, 32)).astype(np.float32)
    fn = jax.jit(decode_attention, static_argnames=("config", "num_samples"))
    out, attended = fn(jnp.asarray(q), cache, jnp.int32(1), jnp.asarray(plan.page_table), jnp.asarray(lengths),
                       AttentionConfig(backend="pallas"), num_samples=num_samples,
                       shared_pages=jnp.asarray(plan.shared_pages_per_prompt))
    np.testing.assert_array_equal(np.asarray(attended), lengths)
    for s in range(b):
        kept = np.zeros((2, ck.shape[2]), bool)
        kept[:, :lengths[s]] = True
        # float32 vs float64 over <= 44 tokens; the cascade merges two partial softmaxes by log-sum-exp.
        np.testing.assert_allclose(np.asarray(out[s]), policy_numpy.attend(q[s], ck[1, s], cv[1, s], kept),
                                   rtol=1e-5, atol=1e-5)


def _slot_groups(slot_rows: list[int | None], num_samples: int, shared_pages: np.ndarray, width: int):
    """A SharedPrefix of rows placed in any slots (slot_rows: the planned row in each slot, None: empty), grouped
    as the continuous engine's scheduler groups them: samples s // width of a prompt, led by their first slot."""
    leader, place, shared, first = [], [], [], {}
    for i, row in enumerate(slot_rows):
        p, s = (0, 0) if row is None else divmod(row, num_samples)
        leader.append(i if row is None else first.setdefault((p, s // width), i))
        place.append(s % width)
        shared.append(0 if row is None else shared_pages[p])
    as_int = lambda x: jnp.asarray(x, jnp.int32)
    return SharedPrefix(as_int(leader), as_int(place), as_int(np.arange(len(slot_rows))), as_int(shared), width)


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_cascade_over_slots_in_any_order(backend):
    """The cascade of the continuous engine: a prompt's samples in any slots, empty slots between them, groups of
    `width` samples reading the prompt's pages once; each row equals the float64 attention over its tokens, and
    a row's result is bit-identical whatever runs beside it (other queries, neighbours finished)."""
    config = Qwen3Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32)
    n, prompt_lengths, new = 3, [37, 16, 5], 30
    plan, cache, ck, cv = _filled_cache(prompt_lengths, n, new, config, offset=0)
    rng = np.random.default_rng(3)
    slot_rows = [int(r) for r in rng.permutation(9)]
    for i in (2, 7, 11):
        slot_rows.insert(i, None)
    table = np.zeros((12, plan.page_table.shape[1]), np.int32)
    lengths = np.zeros(12, np.int32)
    for i, row in enumerate(slot_rows):
        if row is not None:
            table[i] = plan.page_table[row]
            lengths[i] = prompt_lengths[row // n] + row % 7 + 1
    prefix = _slot_groups(slot_rows, n, plan.shared_pages_per_prompt, width=2)
    q = rng.normal(size=(12, 8, 32)).astype(np.float32)
    attention = AttentionConfig(backend=backend)
    fn = jax.jit(lambda q, lengths, prefix: decode_attention(q, cache, jnp.int32(1), jnp.asarray(table), lengths,
                                                             attention, prefix=prefix))
    out, attended = fn(jnp.asarray(q), jnp.asarray(lengths), prefix)
    np.testing.assert_array_equal(np.asarray(attended), lengths)
    for i, row in enumerate(slot_rows):
        if row is None:
            continue
        kept = np.zeros((2, ck.shape[2]), bool)
        kept[:, :lengths[i]] = True
        # float32 vs float64 over <= 44 tokens; the cascade merges two partial softmaxes by log-sum-exp.
        np.testing.assert_allclose(np.asarray(out[i]), policy_numpy.attend(q[i], ck[1, row], cv[1, row], kept),
                                   rtol=1e-5, atol=1e-5)
    # The neighbours change: other queries, and every other odd slot finished (length 0).
    q2 = rng.normal(size=q.shape).astype(np.float32)
    q2[::2] = q[::2]
    lengths2 = np.where(np.arange(12) % 2 == 0, lengths, 0).astype(np.int32)
    out2, _ = fn(jnp.asarray(q2), jnp.asarray(lengths2), prefix)
    for i in range(0, 12, 2):
        if lengths[i]:
            np.testing.assert_array_equal(np.asarray(out2[i]), np.asarray(out[i]), err_msg=f"slot {i}")


# Qwen3-8B decode shapes: Hq 32, Hkv 8, head_dim 128, bf16; 8 sequences of up to 4096 tokens, 2 layers.
def _abstract_decode_args(batch: int = 8, width: int = 257):
    sds = jax.ShapeDtypeStruct
    pool = (2, 8, batch * width + 1, 16, 128)
    cache = KVCache(sds(pool, jnp.bfloat16), sds(pool, jnp.bfloat16), sds((2, pool[2], 8, 128), jnp.bfloat16))
    return (sds((batch, 32, 128), jnp.bfloat16), cache, sds((), jnp.int32), sds((batch, width), jnp.int32),
            sds((batch,), jnp.int32), sds((2,), jnp.int32))


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("config,num_samples", [
    (AttentionConfig(dataclasses.replace(BLOCK.policy, block_topk=64), backend="pallas"), 1),  # budget 1024, layer 0 dense
    (AttentionConfig(backend="pallas"), 4),                             # cascade: 2 prompts x 4 samples
], ids=["block_topk", "cascade"])
def test_decode_attention_lowers_with_the_platform_kernel(platform, config, num_samples):
    """The engine's decode attention (XLA selection + kernels) exported for GPU / TPU picks that platform's
    kernel (lax.platform_dependent), not the CPU interpret path."""
    def fn(q, cache, layer, table, lengths, shared):
        return decode_attention(q, cache, layer, table, lengths, config,
                                num_samples=num_samples, shared_pages=shared)

    text = export_mlir(fn, platform, *_abstract_decode_args())
    assert MARKERS[platform] in text
    assert "interpret" not in text.lower()


@pytest.mark.parametrize("config", [AttentionConfig(), BLOCK, AttentionConfig(SlidingWindow(local=64)),
                                    AttentionConfig(OracleTopK(topk=64))], ids=AttentionConfig.describe)
def test_step_work_does_not_follow_the_page_table_width(config):
    """A step costs what it reads: XLA's count of one compiled decode-attention step (every loop's trip count is
    a run-time value, its body is counted once) is the same for a page table of 64 pages as for one of 2048,
    over the same pool (XLA:CPU counts the arrays a while loop carries as read, so the pool is held fixed; the
    timed counterpart is benchmark_decode.py --mode=capacity)."""
    pages = 8 * 2048 + 1

    def cost(width: int) -> dict:
        sds = jax.ShapeDtypeStruct
        pool = (1, 2, pages, 16, 32)
        summaries = [sds((1, pages, 2, 32), jnp.float32)] * len(config.summaries)
        cache = KVCache(sds(pool, jnp.float32), sds(pool, jnp.float32), *summaries)
        fn = jax.jit(lambda q, c, t, n: decode_attention(q, c, jnp.int32(0), t, n, config)[0])
        analysis = fn.lower(sds((8, 4, 32), jnp.float32), cache, sds((8, width), jnp.int32),
                            sds((8,), jnp.int32)).compile().cost_analysis()
        return analysis[0] if isinstance(analysis, (list, tuple)) else analysis

    narrow, wide = cost(64), cost(2048)
    for key in ("flops", "bytes accessed"):
        assert wide[key] <= 1.05 * narrow[key], (key, narrow[key], wide[key])
