"""Page lists chosen in XLA select exactly the tokens of the reference policy, through a shuffled page table."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kinetics_jax.attention import AttentionConfig, keep_mask, selection
from kinetics_jax.attention.dispatch import paged_from_contiguous
from kinetics_jax.cache import KVCache

CONFIGS = [
    AttentionConfig(block_size=8),
    AttentionConfig(kind="sliding_window", sink=4, local=9, block_size=8),
    AttentionConfig(kind="sliding_window", sink=11, local=20, block_size=4),
    AttentionConfig(kind="block_topk", sink=4, local=0, block_size=8, block_topk=3),
    AttentionConfig(kind="block_topk", sink=5, local=6, block_size=4, block_topk=4),
    AttentionConfig(kind="block_topk", sink=0, local=3, block_size=16, block_topk=1),
    AttentionConfig(kind="block_topk", sink=4, local=0, block_size=8, block_topk=2, score="quest"),
]


def _shuffled(cache: KVCache, table: jnp.ndarray, seed: int) -> tuple[KVCache, jnp.ndarray]:
    """The same cache with its pages stored in a random order (page ids are not positions)."""
    perm = np.random.default_rng(seed).permutation(cache.k.shape[2])  # new id of old page i is perm[i]
    inv = np.argsort(perm)
    moved = KVCache(*(None if a is None else a[:, :, inv] for a in cache))
    return moved, jnp.asarray(perm)[table]


def _token_mask(pages: selection.PageList, table: np.ndarray, t: int, page_size: int, offset: int) -> np.ndarray:
    """bool[B, Hkv, T] of the tokens a page list attends (checks each listed page belongs to its sequence)."""
    b, hkv, _ = pages.pages.shape
    mask = np.zeros((b, hkv, t), bool)
    for i in range(b):
        position = {int(page): j for j, page in enumerate(table[i])}
        for h in range(hkv):
            count = int(pages.count[i, h])
            assert (pages.hi[i, h, count:] == pages.lo[i, h, count:]).all()  # nothing past count
            for e in range(count):
                j = position[int(pages.pages[i, h, e])]
                lo, hi = int(pages.lo[i, h, e]), int(pages.hi[i, h, e])
                assert lo < hi, "a listed entry attends nothing"
                tokens = j * page_size + np.arange(lo, hi) - offset
                assert not mask[i, h, tokens].any(), "a token listed twice"
                mask[i, h, tokens] = True
    return mask


@pytest.mark.parametrize("config", CONFIGS, ids=AttentionConfig.describe)
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (8, 1)])
def test_page_lists_select_the_reference_tokens(config, hq, hkv):
    rng = np.random.default_rng(hq + 10 * hkv)
    b, t, d = 4, 75, 8
    q = jnp.asarray(rng.normal(size=(b, hq, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, hkv, d)), jnp.float32)
    lengths = jnp.asarray([75, 40, 13, 2], jnp.int32)
    cache, table = _shuffled(*paged_from_contiguous(k, k, lengths, config), seed=hq)
    ps, offset = config.block_size, config.page_offset
    if config.kind == "dense":
        pages = selection.dense_pages(table, lengths, hkv, ps, offset)
    elif config.kind == "sliding_window":
        pages = selection.sliding_window_pages(table, lengths, hkv, config)
    else:
        pages = selection.block_topk_pages(q, cache, jnp.int32(0), table, lengths, config)
    got = _token_mask(pages, np.asarray(table), t, ps, offset)
    np.testing.assert_array_equal(got, np.asarray(keep_mask(q, k, lengths, config)))
    np.testing.assert_array_equal(np.asarray(pages.tokens()), got.sum(-1))
    # the list is no wider than the policy needs: sink pages + chosen blocks + local pages
    if config.kind == "block_topk":
        width = -(-config.sink // ps) + config.block_topk + -(-(config.local + ps - 1) // ps)
        assert pages.pages.shape[-1] == width


def test_quest_score_identity_equals_the_channel_max():
    """block_scores' closed form for the Quest bound equals mean_g sum_d max(q min, q max) written out."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 4, 8)).astype(np.float32)
    k = rng.normal(size=(2, 32, 2, 8)).astype(np.float32)
    config = AttentionConfig(kind="block_topk", sink=0, block_size=8, block_topk=1, score="quest")
    cache, table = paged_from_contiguous(jnp.asarray(k), jnp.asarray(k), jnp.asarray([32, 32]), config)
    got = np.asarray(selection.block_scores(jnp.asarray(q), cache, jnp.int32(0), table, "quest"))
    blocks = k.reshape(2, 4, 8, 2, 8)
    lo, hi = blocks.min(2), blocks.max(2)  # [B, J, Hkv, D]
    qg = q.reshape(2, 2, 2, 8)
    expect = np.maximum(qg[:, :, :, None] * lo.transpose(0, 2, 1, 3)[:, :, None],
                        qg[:, :, :, None] * hi.transpose(0, 2, 1, 3)[:, :, None]).sum(-1).mean(2)
    # float32, 8-channel sums: ~1e-6
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
