"""Strided block top-k (kinetics_jax/policies/strided_block_topk.py): its keep mask and the engine's paged step on
both backends against a float64 numpy version of the Kinetics algorithm, in token space; its counts, label and
cost; a real run whose counters price like the analytic model."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import kinetics_jax as kj
import policy_numpy
from kinetics_jax import cost
from kinetics_jax.attention import reference_decode, sparse_decode
from kinetics_jax.policies import AttentionConfig, StridedBlockTopK, block_topk, parse_policy, policy_from_fields

POLICIES = [
    StridedBlockTopK(block_topk=2, block_size=8),
    StridedBlockTopK(block_topk=3, block_size=8, sink=5, local=6),
    StridedBlockTopK(block_topk=1, block_size=16, sink=0, local=3),
    StridedBlockTopK(block_topk=4, block_size=4, sink=7, local=0),
]


def keep_float64(q: np.ndarray, k: np.ndarray, n: int, policy: StridedBlockTopK) -> np.ndarray:
    """bool[Hkv, T] kept tokens of one sequence (q [Hq, D], k [T, Hkv, D], n cached tokens), the original's
    algorithm in token space: windows of block_size tokens every block_size / 2 over the middle [sink, n - local),
    scored by the mean over the window of the group-mean logit; the best min(2 x block_topk, windows) of them
    (ties: the lower window); the union of their tokens, sorted, cut to block_topk x block_size; the middle's
    tokens past the last window (which the original drops) are kept with the local window."""
    t_max, hkv, _ = k.shape
    group = q.shape[0] // hkv
    bs, stride, budget = policy.block_size, policy.block_size // 2, policy.block_size * policy.block_topk
    lo, hi = policy.sink, max(n - policy.local, policy.sink)
    out = np.zeros((hkv, t_max), bool)
    out[:, :min(policy.sink, n)] = True
    out[:, hi:n] = True
    if hi - lo < bs:  # no window fits: the middle is read whole
        out[:, lo:hi] = True
        return out
    starts = list(range(lo, hi - bs + 1, stride))
    covered = starts[-1] + bs
    out[:, covered:hi] = True
    for h in range(hkv):
        logits = q[h * group:(h + 1) * group].astype(np.float64) @ k[:, h].astype(np.float64).T  # [G, T]
        mean_logit = logits.mean(0)
        scores = [float(mean_logit[s:s + bs].mean()) for s in starts]
        best = sorted(range(len(starts)), key=lambda j: (-scores[j], j))[:2 * policy.block_topk]
        tokens = sorted({t for j in best for t in range(starts[j], starts[j] + bs)})[:budget]
        out[h, tokens] = True
    return out


def _inputs(seed: int, hq: int, hkv: int, t: int, lengths: list[int], d: int = 16):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(len(lengths), hq, d)).astype(np.float32)
    k, v = (rng.normal(size=(len(lengths), t, hkv, d)).astype(np.float32) for _ in range(2))
    return q, k, v, np.asarray(lengths, np.int32)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label())
@pytest.mark.parametrize("hq,hkv", [(4, 4), (8, 2), (8, 1)])
def test_keep_mask_is_the_kinetics_algorithm(policy, hq, hkv):
    lengths = [97, 60, 37, 23, 9, 1]  # active, near and below the threshold, not multiples of the stride
    q, k, _, n = _inputs(hq + 3 * hkv, hq, hkv, 97, lengths)
    kept = np.asarray(policy.keep_mask(jnp.asarray(q), jnp.asarray(k), jnp.asarray(n)))
    for b, length in enumerate(lengths):
        np.testing.assert_array_equal(kept[b], keep_float64(q[b], k[b], length, policy), err_msg=f"n={length}")
    np.testing.assert_array_equal(kept.sum(-1), np.broadcast_to(policy.attended(n)[:, None], kept.shape[:2]))


@pytest.mark.parametrize("policy", POLICIES[:3], ids=lambda p: p.label())
@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_paged_step_attends_the_kinetics_tokens(policy, backend):
    """The engine's selection over the paged cache (page scores, window top-k, union) and the kernels: poisoned
    tokens past each length are never read; float32 scores and online softmax over <= 101 tokens against float64
    differ by ~1e-6."""
    q, k, v, n = _inputs(11, 8, 2, 101, [101, 70, 37, 3])
    for b, length in enumerate(n):
        k[b, length:], v[b, length:] = np.nan, np.nan
    config = AttentionConfig(policy, backend=backend)
    out = np.asarray(sparse_decode(*(jnp.asarray(a) for a in (q, k, v, n)), config))
    for b, length in enumerate(n):
        kept = keep_float64(q[b], np.nan_to_num(k[b]), int(length), policy)
        np.testing.assert_allclose(out[b], policy_numpy.attend(q[b], k[b], v[b], kept), rtol=1e-5, atol=1e-5)


def test_windows_scored_in_chunks_choose_what_the_reference_does():
    """More windows than two scoring chunks: the running top-k merges chunks as the keep mask chooses."""
    policy = StridedBlockTopK(block_topk=12, block_size=4, sink=4)
    q, k, v, n = _inputs(5, 4, 2, 700, [700, 531, 290, 40], d=8)
    assert policy.candidate_blocks(700) - 1 > 2 * block_topk.SCORE_CHUNK
    args = [jnp.asarray(a) for a in (q, k, v, n)]
    np.testing.assert_allclose(np.asarray(sparse_decode(*args, AttentionConfig(policy))),
                               np.asarray(reference_decode(*args, AttentionConfig(policy))), rtol=1e-5, atol=1e-5)


def test_counts_layout_and_label():
    policy = StridedBlockTopK(block_topk=4, block_size=16)
    assert (policy.tokens, policy.budget, policy.stride, policy.kept_pages) == (64, 68, 8, 8)
    config = AttentionConfig(policy)
    assert (config.cache_page_size, config.page_offset, config.summaries) == (8, 4, ("k_mean",))
    n = np.arange(1, 200)
    expect = [m if (m - 4) // 8 <= 8 else 68 + (m - 4) % 8 for m in n]  # active past 8 full middle pages
    np.testing.assert_array_equal(policy.attended(n), expect)
    np.testing.assert_array_equal(np.asarray(policy.attended(jnp.asarray(n), jnp)), expect)
    np.testing.assert_array_equal(policy.active(n), np.asarray(expect) < n)
    assert policy.label() == "strided_block_topk-64"
    assert parse_policy("strided_block_topk-32:block_size=8,local=3") == StridedBlockTopK(block_topk=4, block_size=8,
                                                                                        local=3)
    assert policy_from_fields(policy.to_fields()) == policy
    assert AttentionConfig.from_fields(config.to_fields()) == config


@pytest.mark.parametrize("make,why", [
    (lambda: parse_policy("strided_block_topk-24"), "not a whole number of 16-token blocks"),
    (lambda: StridedBlockTopK(block_topk=2, block_size=1), "block_size must be an integer >= 2"),
    (lambda: StridedBlockTopK(block_topk=2, block_size=12), "block_size: must be a power of two"),
    (lambda: StridedBlockTopK(block_topk=0), "a budget of 0 attends nothing"),
    (lambda: AttentionConfig(StridedBlockTopK(block_topk=2), page_size=16), "block size 8"),
    (lambda: parse_policy("strided_block_topk-64:score=quest"), "a field of strided_block_topk"),
])
def test_bad_settings_are_named(make, why):
    with pytest.raises(ValueError, match=why):
        make()


def test_a_real_run_prices_like_the_analytic_model(hf_checkpoints):
    """Greedy, no EOS: every sample generates exactly 40 tokens, so the measured attended-token counters give
    the analytic cost of those lengths to the FLOP and byte; the kernels choose the tokens XLA does."""
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 160, m).tolist() for m in (13, 30)]
    attention = AttentionConfig(StridedBlockTopK(block_topk=2, block_size=8, local=3))
    runs = {backend: kj.generate(model, prompts, num_samples=2, max_new_tokens=40, sampling=kj.SamplingConfig.greedy_config(),
                                 attention=dataclasses.replace(attention, backend=backend))
            for backend in ("xla", "pallas")}
    result = runs["xla"]
    assert (result.lengths == 40).all()
    np.testing.assert_array_equal(runs["pallas"].tokens, result.tokens)
    np.testing.assert_array_equal(runs["pallas"].attended_tokens, result.attended_tokens)
    sparse_layers = result.attended_tokens[:, 1:]
    assert (sparse_layers < result.attended_tokens[:, :1]).any()  # the policy was active
    measured = cost.from_counters(result, model.config, dtype="float32")
    expected = [cost.tts_cost(model.config, prompt_len=len(p), gen_lens=40, num_samples=2, attention=attention,
                              dtype="float32") for p in prompts]
    for field in ("param_flops", "attention_flops", "scoring_flops", "kv_bytes", "summary_bytes"):
        assert getattr(measured, field) == sum(getattr(e, field) for e in expected), field
    assert measured.scoring_flops > 0
