"""Page lists chosen in XLA select exactly the tokens of the reference policy, through a shuffled page table."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kinetics_jax.attention import selection
from kinetics_jax.cache import KVCache, PagedLayout
from kinetics_jax.policies import AttentionConfig, BlockTopK, SlidingWindow, block_topk
from pallas_kernels.paged_decode import PageList

CONFIGS = [
    AttentionConfig(page_size=8),
    AttentionConfig(SlidingWindow(sink=4, local=9), page_size=8),
    AttentionConfig(SlidingWindow(sink=11, local=20), page_size=4),
    AttentionConfig(BlockTopK(sink=4, local=0, block_size=8, block_topk=3)),
    AttentionConfig(BlockTopK(sink=5, local=6, block_size=4, block_topk=4)),
    AttentionConfig(BlockTopK(sink=0, local=3, block_size=16, block_topk=1)),
    AttentionConfig(BlockTopK(sink=4, local=0, block_size=8, block_topk=2, score="quest")),
]


def _shuffled(cache: KVCache, table: jnp.ndarray, seed: int) -> tuple[KVCache, jnp.ndarray]:
    """The same cache with its pages stored in a random order (page ids are not positions)."""
    perm = np.random.default_rng(seed).permutation(cache.k.shape[2])  # new id of old page i is perm[i]
    inv = np.argsort(perm)
    pools = {"k": cache.k[:, :, inv], "v": cache.v[:, :, inv]}  # pools [L, Hkv, P, ..], summaries [L, P, ..]
    moved = KVCache(**pools, **{name: getattr(cache, name)[:, inv] for name in cache.summary_fields})
    return moved, jnp.asarray(perm)[table]


def _token_mask(pages: PageList, table: np.ndarray, t: int, page_size: int, offset: int) -> np.ndarray:
    """bool[B, Hkv, T] of the tokens a page list attends, written from its definition in numpy (checks that it
    reads the rows' own page tables, that each read entry reads something, and that no token is read twice)."""
    pages_table, start, end, window = (np.asarray(a) for a in (pages.table, pages.start, pages.end, pages.window))
    np.testing.assert_array_equal(pages_table, table)  # the kernels look pages up in the rows' own tables
    blocks = None if pages.blocks is None else np.asarray(pages.blocks)
    b, lists, _ = pages.shape
    mask = np.zeros((b, lists, t), bool)
    for i, h in np.ndindex(b, lists):
        w0, w1, w2, w3 = window[i]
        for e in range(start[i, h], end[i, h]):
            block = e if blocks is None else int(blocks[i, h, e])
            position = block * page_size + np.arange(page_size)
            read = ((position >= w0) & (position < w1)) | ((position >= w2) & (position < w3))
            assert read.any(), "a read entry attends nothing"
            tokens = position[read] - offset
            assert not mask[i, h, tokens].any(), "a token read twice"
            mask[i, h, tokens] = True
    return mask



def _paged(k, lengths, config: AttentionConfig):
    """Keys k [B, T, Hkv, D] (and the same values) as a one-layer cache of config's layout, each row its own pages."""
    return PagedLayout.of(config).from_contiguous(k[None], k[None], lengths)

@pytest.mark.parametrize("config", CONFIGS, ids=AttentionConfig.describe)
@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (8, 1)])
def test_page_lists_select_the_reference_tokens(config, hq, hkv):
    rng = np.random.default_rng(hq + 10 * hkv)
    b, t, d = 4, 75, 8
    q = jnp.asarray(rng.normal(size=(b, hq, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, hkv, d)), jnp.float32)
    lengths = jnp.asarray([75, 40, 13, 2], jnp.int32)
    cache, table = _shuffled(*_paged(k, lengths, config), seed=hq)
    ps, offset = config.cache_page_size, config.page_offset
    if config.policy.kind == "dense":
        pages = selection.dense_pages(table, lengths, ps, offset)
    elif config.policy.kind == "sliding_window":
        sink, local = config.policy.sink, config.policy.local
        pages = selection.ends_pages(table, lengths, sink, jnp.maximum(lengths - local, sink), local, ps)
    else:
        pages = block_topk.block_topk_pages(q, cache, jnp.int32(0), table, lengths, config.policy)
    got = _token_mask(pages, np.asarray(table), t, ps, offset)
    expect = np.asarray(config.policy.keep_mask(q, k, lengths))
    np.testing.assert_array_equal(np.broadcast_to(got, expect.shape), expect)
    np.testing.assert_array_equal(np.asarray(pages.tokens(ps)), got.sum(-1))
    # the list is no wider than the policy needs: sink pages + chosen blocks + local pages
    if config.policy.kind == "block_topk":
        width = -(-config.policy.sink // ps) + config.policy.block_topk + -(-(config.policy.local + ps - 1) // ps)
        assert pages.shape[-1] == width
    if config.policy.kind == "dense":  # one list for every KV head, straight from the page table: nothing of width built
        assert pages.blocks is None and pages.shape == (b, 1, table.shape[1])


@pytest.mark.parametrize("score", ["mean", "quest"])
def test_scoring_in_chunks_and_shared_prompt_scoring_choose_what_the_reference_does(score):
    """More candidate blocks than one scoring chunk (the running top-k merges chunks), and two samples per prompt
    whose first 100 blocks are the prompt's shared pages (scored from one read of their summaries)."""
    rng = np.random.default_rng(7)
    b, t, hq, hkv, d, ps = 4, 1300, 4, 2, 8, 4
    config = AttentionConfig(BlockTopK(sink=4, local=0, block_size=ps, block_topk=24, score=score))
    assert (t - config.policy.sink) // ps > 4 * block_topk.SCORE_CHUNK
    q = jnp.asarray(rng.normal(size=(b, hq, d)), jnp.float32)
    shared_k = rng.normal(size=(2, 1, 404, hkv, d))
    k = np.concatenate([np.repeat(shared_k, 2, axis=1).reshape(b, 404, hkv, d),
                        rng.normal(size=(b, t - 404, hkv, d))], axis=1)
    k = jnp.asarray(k, jnp.float32)
    lengths = jnp.asarray([1300, 1300, 997, 997], jnp.int32)
    cache, table = _paged(k, lengths, config)
    shared = 101  # entries: the sink page and 100 blocks (tokens 0 .. 403)
    table = np.array(table)
    table[1, :shared] = table[0, :shared]  # the samples of a prompt point at the same prompt pages
    table[3, :shared] = table[2, :shared]
    pages = block_topk.block_topk_pages(q, cache, jnp.int32(0), jnp.asarray(table), lengths, config.policy,
                                       num_samples=2, shared_pages=jnp.asarray([shared, shared], jnp.int32))
    got = _token_mask(pages, table, t, ps, config.page_offset)
    np.testing.assert_array_equal(got, np.asarray(config.policy.keep_mask(q, k, lengths)))


def test_quest_score_identity_equals_the_channel_max():
    """block_scores' closed form for the Quest bound equals mean_g sum_d max(q min, q max) written out."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 4, 8)).astype(np.float32)
    k = rng.normal(size=(2, 32, 2, 8)).astype(np.float32)
    config = AttentionConfig(BlockTopK(sink=0, block_size=8, block_topk=1, score="quest"))
    cache, table = _paged(jnp.asarray(k), jnp.asarray([32, 32]), config)
    qbar, qabs = block_topk.group_means(jnp.asarray(q), 2, quest=True)
    width = table.shape[1]
    got = np.asarray(block_topk.block_scores(qbar[:, None], qabs[:, None], cache, jnp.int32(0), table, 0,
                                            jnp.zeros(2, jnp.int32), jnp.full(2, width, jnp.int32), width)[:, 0])
    blocks = k.reshape(2, 4, 8, 2, 8)
    lo, hi = blocks.min(2), blocks.max(2)  # [B, J, Hkv, D]
    qg = q.reshape(2, 2, 2, 8)
    expect = np.maximum(qg[:, :, :, None] * lo.transpose(0, 2, 1, 3)[:, :, None],
                        qg[:, :, :, None] * hi.transpose(0, 2, 1, 3)[:, :, None]).sum(-1).mean(2)
    # float32, 8-channel sums: ~1e-6
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
