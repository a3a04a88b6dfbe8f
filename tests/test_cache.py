"""Paged cache: the plan shares prompt pages across samples, and summaries follow every append."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from kinetics_jax import Qwen3Config
from kinetics_jax.cache import NULL_PAGE, CachePlan, KVCache


def test_prefix_pages_are_shared_across_samples():
    lengths, n, new, ps = [40, 5, 32], 4, 10, 16
    plan = CachePlan.for_request(lengths, n, new, ps)
    # full prompt pages: 2 + 0 + 2, stored once; own pages per sample: ceil((L + new - 1) / 16) - full
    own = [-(-(40 + 9) // 16) - 2, -(-(5 + 9) // 16) - 0, -(-(32 + 9) // 16) - 2]
    assert plan.shared_pages == 4
    assert plan.allocated_pages == 4 + n * sum(own) == 4 + 4 * (2 + 1 + 1)
    unshared = sum(n * -(-(length + new - 1) // ps) for length in lengths)
    assert plan.allocated_pages < unshared
    table = plan.page_table
    for p in range(3):
        rows = table[p * n:(p + 1) * n]
        full = lengths[p] // ps
        assert (rows[:, :full] == rows[0, :full]).all()                    # the same shared pages
        own_pages = rows[:, full:full + own[p]]
        assert len(np.unique(own_pages)) == n * own[p]                     # private pages
    assert NULL_PAGE not in table[:, :1] and table.max() == plan.num_pages - 1


def test_prefill_scatter_copies_only_partial_pages():
    plan = CachePlan.for_request([20], 3, 5, 8)
    entries = list(zip(plan.prefill_page, plan.prefill_slot, plan.prefill_prompt, plan.prefill_token))
    assert len(entries) == 16 + 3 * 4  # 2 full pages once, the 4-token partial page per sample
    assert len({(p, s) for p, s, _, _ in entries}) == len(entries)  # every (page, slot) written once


def test_pool_is_sized_from_the_request_and_bytes_counted():
    config = Qwen3Config.preset("qwen3-8b")
    plan = CachePlan.for_request([100] * 2, 8, 1000, 16, pad_pages_to=64)
    assert plan.num_pages % 64 == 0 and plan.num_pages >= plan.allocated_pages + 1
    assert plan.bytes(config, "bfloat16", minmax=False) >= plan.allocated_pages * 16 * 147_456


def test_summaries_follow_appends():
    config = Qwen3Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    cache = KVCache.zeros(config, num_pages=3, page_size=4, dtype=jnp.float32, minmax=True)
    keys = np.random.default_rng(0).normal(size=(6, 1, 4)).astype(np.float32)
    pages, slots = np.array([1, 1, 1, 2, 2, 1]), np.array([0, 1, 2, 0, 1, 3])
    for t in range(6):  # decode-style appends, one token at a time into layer 1
        cache = cache.append(1, jnp.asarray(pages[t:t + 1]), jnp.asarray(slots[t:t + 1]),
                             jnp.asarray(keys[t:t + 1]), jnp.asarray(keys[t:t + 1]))
    for page in (1, 2):
        mine = keys[pages == page]
        np.testing.assert_allclose(np.asarray(cache.k_sum[1, 0, page]), mine[:, 0].sum(0), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(cache.k_min[1, 0, page]), mine[:, 0].min(0))
        np.testing.assert_array_equal(np.asarray(cache.k_max[1, 0, page]), mine[:, 0].max(0))
    np.testing.assert_array_equal(np.asarray(cache.k[1, 0, pages, slots]), keys[:, 0])
    assert float(jnp.abs(cache.k_sum[0]).max()) == 0.0  # other layers untouched


def test_page_offset_makes_blocks_after_the_sink_whole_pages():
    """With offset 12 and pages of 16, the sink (tokens 0-3) fills page-table entry 0 and block j (tokens
    4 + 16 j ..) is entry j + 1; the prompt's full pages are shared, the partial one copied per sample."""
    plan = CachePlan.for_request([40], 2, 30, 16, page_offset=12)
    assert plan.shared_pages == (40 + 12) // 16 == 3
    np.testing.assert_array_equal(plan.shared_pages_per_prompt, [3])
    entries = list(zip(plan.prefill_page, plan.prefill_slot, plan.prefill_prompt, plan.prefill_token))
    where = {(int(t), int(page)): int(slot) for page, slot, _, t in entries if page in plan.page_table[0]}
    for t in range(40):
        entry = (t + 12) // 16
        assert where[(t, int(plan.page_table[0, entry]))] == (t + 12) % 16
    assert plan.page_table.shape[1] == -(-(12 + 40 + 29) // 16)  # every stored virtual index has a page
