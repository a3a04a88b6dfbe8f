"""Paged cache: the plan shares prompt pages across samples, and summaries follow every append."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from kinetics_jax import Qwen3Config
from kinetics_jax.cache import NULL_PAGE, PagedLayout
from kinetics_jax.checks import checked_int


def test_prefix_pages_are_shared_across_samples():
    lengths, n, new, ps = [40, 5, 32], 4, 10, 16
    plan = PagedLayout(ps).plan(lengths, n, new)
    # full prompt pages: 2 + 0 + 2, stored once; own pages per sample: ceil((L + new - 1) / 16) - full
    own = [-(-(40 + 9) // 16) - 2, -(-(5 + 9) // 16) - 0, -(-(32 + 9) // 16) - 2]
    assert plan.shared_page_count == 4
    in_use = np.setdiff1d(plan.page_table, [NULL_PAGE]).size  # distinct pages the table points at
    assert in_use == 4 + n * sum(own) == 4 + 4 * (2 + 1 + 1)
    unshared = sum(n * -(-(length + new - 1) // ps) for length in lengths)
    assert in_use < unshared
    table = plan.page_table
    for p in range(3):
        rows = table[p * n:(p + 1) * n]
        full = lengths[p] // ps
        assert (rows[:, :full] == rows[0, :full]).all()                    # the same shared pages
        own_pages = rows[:, full:full + own[p]]
        assert len(np.unique(own_pages)) == n * own[p]                     # private pages
    assert NULL_PAGE not in table[:, :1] and table.max() == plan.num_pages - 1


def test_prefill_writes_copy_only_partial_pages():
    plan = PagedLayout(8).plan([20], 3, 5)
    entries = list(zip(plan.prefill_page, plan.prefill_prompt, plan.prefill_block))
    assert len(entries) == 2 + 3  # 2 full pages once, the partial page (block 2) once per sample
    assert len({page for page, _, _ in entries}) == len(entries)  # every page written once
    assert sorted(block for _, _, block in entries) == [0, 1, 2, 2, 2]
    writes = plan.prefill_writes(32, size=8)  # prompts padded to 32 tokens: 4 source pages each
    np.testing.assert_array_equal(writes[2], [1, 1, 0, 0, 0, 0, 0, 0])  # summaries of the full pages only
    assert (writes[0, 5:] == NULL_PAGE).all()  # padding writes the null page


def test_pool_is_sized_from_the_request_and_bytes_counted():
    config = Qwen3Config.preset("qwen3-8b")
    plan = PagedLayout(16).plan([100] * 2, 8, 1000, pad_pages_to=64)
    pages = 2 * (100 // 16) + 2 * 8 * (-(-(100 + 999) // 16) - 100 // 16)  # shared + own pages: 12 + 16 * 63
    assert plan.num_pages % 64 == 0 and plan.num_pages >= pages + 1
    kv = PagedLayout(16).pool_bytes(config, plan.num_pages, "bfloat16")
    assert kv >= pages * 16 * 147_456
    # one bf16 mean key per page, layer and KV head: 1/16 of the K pool at 16-token pages
    assert PagedLayout(16, summaries=("k_mean",)).pool_bytes(config, plan.num_pages, "bfloat16") - kv == plan.num_pages * 36 * 8 * 128 * 2


def test_pool_size_in_closed_form_equals_the_plan():
    """pool_pages / pool_bytes size a request with no per-sample work (the engine refuses an absurd num_samples
    with them before building any plan); they must give the plan's own numbers."""
    config = Qwen3Config.preset("qwen3-8b")
    for lengths, n, new, ps, offset, pad in itertools.product(([1], [16, 3], [40, 5, 32], [15, 17]), (1, 3),
                                                              (1, 2, 17), (8, 16), (0, 5), (1, 64)):
        if offset >= ps:
            continue
        layout = PagedLayout(ps, offset, ("k_min", "k_max"))
        plan = layout.plan(lengths, n, new, pad_pages_to=pad)
        pages = layout.pool_pages(lengths, n, new, pad_pages_to=pad)
        assert pages == plan.num_pages, (lengths, n, new, ps, offset, pad)
        # K and V: 2 * ps slots per page; 2 summaries: one slot's worth each
        assert layout.pool_bytes(config, pages, "bfloat16") == pages * (2 * ps + 2) * 36 * 8 * 128 * 2
    assert PagedLayout(16).pool_pages([100, 7], 10**8, 4) == 1 + 6 + 10**8 * (1 + 1)  # instant, even for 10**8


def test_checked_int_takes_any_integral_non_bool():
    for value in (4, np.int64(4), np.int32(4), np.uint8(4), np.array(4)):
        out = checked_int(value, "x", minimum=1)
        assert out == 4 and type(out) is int
    for value, kind in ((True, "bool"), (np.True_, "bool"), (4.0, "float"), (np.float32(4), "float32"),
                        ("4", "str"), (None, "NoneType"), (np.array([4]), "ndarray")):
        with pytest.raises(ValueError, match=f"^x must be an integer >= 1, got .*, a {kind}"):
            checked_int(value, "x", minimum=1)
    with pytest.raises(ValueError, match=r"^x must be an integer >= 1 \(why\), got 0$"):
        checked_int(0, "x", minimum=1, why="why")
    with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, 4294967295\], got 4294967296$"):
        checked_int(2**32, "seed", minimum=0, maximum=2**32 - 1)
    with pytest.raises(ValueError, match=r"^x must be an integer <= 3, got 4$"):
        checked_int(np.int64(4), "x", maximum=3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_summaries_are_written_when_a_page_fills(dtype):
    """Decode appends: a page's mean key (f32 mean, stored in the cache dtype) and channel min / max appear when
    its last slot is written; a page still filling keeps zeros; other layers are untouched."""
    config = Qwen3Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    cache = PagedLayout(4, summaries=("k_mean", "k_min", "k_max")).zeros(config, 3, dtype)
    keys = np.asarray(jnp.asarray(np.random.default_rng(0).normal(size=(6, 1, 4)), dtype), np.float32)
    pages, slots = np.array([1, 1, 1, 2, 2, 1]), np.array([0, 1, 2, 0, 1, 3])
    for t in range(6):  # decode-style appends, one token at a time into layer 1
        cache = cache.append(1, jnp.asarray(pages[t:t + 1]), jnp.asarray(slots[t:t + 1]),
                             jnp.asarray(keys[t:t + 1], dtype), jnp.asarray(keys[t:t + 1], dtype))
    full = keys[pages == 1][:, 0]
    mean = np.asarray(jnp.asarray(full.mean(0), dtype), np.float32)  # rounded once, from the f32 mean
    np.testing.assert_allclose(np.asarray(cache.k_mean[1, 1, 0], np.float32), mean, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cache.k_min[1, 1, 0], np.float32), full.min(0))
    np.testing.assert_array_equal(np.asarray(cache.k_max[1, 1, 0], np.float32), full.max(0))
    assert cache.k_mean.dtype == dtype
    assert float(jnp.abs(cache.k_mean[1, 2, 0]).max()) == 0.0  # page 2 is not full yet
    np.testing.assert_array_equal(np.asarray(cache.k[1, 0, pages, slots], np.float32), keys[:, 0])
    assert float(jnp.abs(cache.k_mean[0]).max()) == 0.0  # other layers untouched


def test_prompt_writes_fill_pages_and_the_summaries_of_full_ones():
    config = Qwen3Config(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=4)
    cache = PagedLayout(4, summaries=("k_mean",)).zeros(config, 6, jnp.float32)
    src = np.random.default_rng(1).normal(size=(3, 2, 4, 4)).astype(np.float32)  # [M, Hkv, ps, D]
    cache = cache.write_prompt(jnp.int32(1), jnp.asarray([2, 5, 4]), jnp.asarray(src), jnp.asarray(src + 1),
                               jnp.asarray([0, 2, 2]), jnp.asarray([True, False, False]))
    np.testing.assert_array_equal(np.asarray(cache.k[1, :, 2]), src[0])
    np.testing.assert_array_equal(np.asarray(cache.v[1, :, 5]), src[2] + 1)
    np.testing.assert_array_equal(np.asarray(cache.k[1, :, 4]), src[2])
    np.testing.assert_allclose(np.asarray(cache.k_mean[1, 2]), src[0].mean(1), rtol=1e-6)
    assert float(jnp.abs(cache.k_mean[1, 4:]).max()) == 0.0  # partial pages: no summary yet


def test_page_offset_makes_blocks_after_the_sink_whole_pages():
    """With offset 12 and pages of 16, the sink (tokens 0-3) fills page-table entry 0 and block j (tokens
    4 + 16 j ..) is entry j + 1; the prompt's full pages are shared, the partial one copied per sample."""
    plan = PagedLayout(16, 12).plan([40], 2, 30)
    assert plan.shared_page_count == (40 + 12) // 16 == 3
    np.testing.assert_array_equal(plan.shared_pages_per_prompt, [3])
    entries = {int(page): int(block) for page, block in zip(plan.prefill_page, plan.prefill_block)}
    for entry, page in enumerate(plan.page_table[0, :-(-(40 + 12) // 16)]):
        assert entries[int(page)] == entry  # block j of the prompt (virtual tokens 16 j ..) in entry j
    assert plan.page_table.shape[1] == -(-(12 + 40 + 29) // 16)  # every stored virtual index has a page
