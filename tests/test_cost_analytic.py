"""The analytic cost model (kinetics_jax.cost.analytic) against a brute-force per-step loop, the paper's dense
closed form, the paper's KV and parameter numbers, and properties (hypothesis)."""

from __future__ import annotations

import dataclasses
import functools
import operator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kinetics_jax.config import Qwen3Config
from kinetics_jax.cost.analytic import (HARDWARE, CostBreakdown, Hardware, from_counters, resolve_hardware,
                                        paper_dense_eflops, paper_params, phi, tts_cost)
from kinetics_jax.sampling.engine import GenerationResult
from kinetics_jax.policies import AttentionConfig, BlockTopK, OracleTopK, SlidingWindow

TINY = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8)
TINY_TIED = dataclasses.replace(TINY, tie_word_embeddings=True, num_attention_heads=8, num_hidden_layers=4)
TERMS = ("param_flops", "attention_flops", "scoring_flops", "kv_bytes", "summary_bytes", "param_bytes")

POLICIES = [
    AttentionConfig(),
    AttentionConfig(OracleTopK(sink=2, local=3, topk=5), dense_layers=()),
    AttentionConfig(OracleTopK(sink=4, local=0, topk=7), dense_layers=(0, 2)),
    AttentionConfig(BlockTopK(sink=3, local=2, block_size=4, block_topk=2)),
    AttentionConfig(BlockTopK(sink=4, local=0, block_size=2, block_topk=3, score="quest"), dense_layers=(1,)),
    AttentionConfig(BlockTopK(sink=0, local=5, block_size=8, block_topk=1), dense_layers=()),
    AttentionConfig(SlidingWindow(sink=1, local=6), dense_layers=(2,)),
]


# ------------------------------------------------------------------------------------------------ brute force
def _kept(n: int, a: AttentionConfig) -> int:
    """Tokens of a context of n one sparse layer keeps, by enumerating positions (the policy definitions)."""
    a = a.policy
    if a.kind == "topk":
        return n if n <= a.sink + a.topk + a.local else a.sink + a.topk + a.local
    if a.kind == "sliding_window":
        return sum(1 for t in range(n) if t < a.sink or t >= n - a.local)
    n_full = max(n - a.local - a.sink, 0) // a.block_size
    chosen = set(range(n_full)[-a.block_topk:])  # which blocks win does not change the count
    return sum(1 for t in range(n) if t < a.sink or t >= a.sink + n_full * a.block_size
               or (t - a.sink) // a.block_size in chosen)


def brute_force(config: Qwen3Config, a: AttentionConfig, prompt_lens: list[int], lengths: list[list[int]],
                param_bytes: bool = False, dtype_bytes: int = 2) -> dict[str, int]:
    """Cost terms of prompts p whose samples generate lengths[p][i] tokens, by looping over steps, layers and
    samples: step j attends Li + j - 1 tokens; j = 1 is dense everywhere; dense layers (and sparse layers below
    their threshold) read the prompt once per step for the running samples of a prompt."""
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    params = paper_params(config)
    out = dict.fromkeys(TERMS, 0)
    p, blocks = a.policy, a.policy.kind == "block_topk"
    for li, lens in zip(prompt_lens, lengths):
        for j in range(1, max(lens) + 1):
            running = [length for length in lens if length >= j]
            if not running:
                continue
            n = li + j - 1
            out["param_bytes"] += params * dtype_bytes if param_bytes else 0
            out["param_flops"] += 2 * params * len(running)
            for layer in range(config.num_hidden_layers):
                dense = j == 1 or p.kind == "dense" or layer in a.dense_layers
                # a sparse layer below its threshold attends everything and reads like a dense one (cascade)
                shared = dense or _kept(n, a) == n
                if shared:
                    out["kv_bytes"] += (li + len(running) * (j - 1)) * 2 * hkv * d * dtype_bytes
                if blocks:
                    summary = (2 if p.score == "quest" else 1) * hkv * d * dtype_bytes  # per block, cache dtype
                    n_full = max(n - p.local - p.sink, 0) // p.block_size
                    prompt_blocks = max((li + a.page_offset) // p.block_size - -(-p.sink // p.block_size), 0)
                if blocks and not shared:  # the prompt's blocks: one read for its samples
                    out["summary_bytes"] += summary * min(n_full, prompt_blocks)
                for _ in running:
                    attended = n if dense else _kept(n, a)
                    out["attention_flops"] += 4 * hq * d * attended
                    if not shared:
                        out["kv_bytes"] += attended * 2 * hkv * d * dtype_bytes
                    if dense:
                        continue
                    if blocks and not shared:  # blocks are scored once the policy is active
                        out["scoring_flops"] += (4 if p.score == "quest" else 2) * hkv * d * n_full
                        out["summary_bytes"] += summary * (n_full - min(n_full, prompt_blocks))
    return out


def terms(cost: CostBreakdown) -> dict[str, float]:
    return {t: getattr(cost, t) for t in TERMS}


# ------------------------------------------------------------------------------------------------ exact sums
@pytest.mark.parametrize("attention", POLICIES, ids=lambda a: a.describe())
@pytest.mark.parametrize("config", [TINY, TINY_TIED], ids=["tiny", "tiny_tied"])
@pytest.mark.parametrize("param_bytes", [False, True])
def test_matches_brute_force(attention, config, param_bytes):
    for li, lo, n in [(1, 1, 1), (5, 17, 3), (9, 30, 2), (23, 4, 4)]:
        want = brute_force(config, attention, [li], [[lo] * n], param_bytes)
        got = tts_cost(config, prompt_len=li, gen_lens=lo, num_samples=n, attention=attention,
                       param_bytes=param_bytes)
        assert terms(got) == want
    # a list of lengths: the mean over i of the cost of N samples that all generate lengths[i]
    lens = [3, 11, 26]
    per_length = [brute_force(config, attention, [7], [[lo] * 3], param_bytes) for lo in lens]
    got = tts_cost(config, prompt_len=7, gen_lens=lens, num_samples=3, attention=attention, param_bytes=param_bytes)
    assert terms(got) == {t: sum(c[t] for c in per_length) / 3 for t in TERMS}


def test_totals_and_seconds():
    cost = tts_cost(TINY, prompt_len=5, gen_lens=9, num_samples=2, attention=POLICIES[3], param_bytes=True,
                    hardware="H100-SXM")
    hw = HARDWARE["H100-SXM"]
    assert cost.compute_flops == cost.param_flops + cost.attention_flops + cost.scoring_flops
    assert cost.memory_bytes == cost.kv_bytes + cost.summary_bytes + cost.param_bytes
    assert cost.eflops == cost.compute_flops + hw.intensity * cost.memory_bytes
    assert cost.seconds == pytest.approx(cost.compute_flops / hw.peak_flops + cost.memory_bytes / hw.hbm_bytes_per_s,
                                         rel=1e-12)
    assert cost.hardware == "H100-SXM"
    assert cost.phi == pytest.approx((cost.attention_flops + cost.scoring_flops
                                      + hw.intensity * (cost.kv_bytes + cost.summary_bytes)) / cost.param_flops)


def test_dtype_scales_bytes_only():
    bf16 = tts_cost(TINY, prompt_len=5, gen_lens=9, num_samples=2, param_bytes=True)
    f32 = tts_cost(TINY, prompt_len=5, gen_lens=9, num_samples=2, param_bytes=True, dtype="float32")
    assert f32.kv_bytes == 2 * bf16.kv_bytes and f32.param_bytes == 2 * bf16.param_bytes
    assert f32.compute_flops == bf16.compute_flops


def test_hardware_table():
    assert HARDWARE["B200"].intensity == 562.5
    assert resolve_hardware("b200") is HARDWARE["B200"]
    custom = Hardware("mine", 1e15, 1e12)
    assert resolve_hardware(custom) is custom
    # 1e5 Tera-eFLOPs is about 22 B200-seconds (docs/cost_model.md)
    assert 1e17 / HARDWARE["B200"].peak_flops == pytest.approx(22.2, abs=0.05)


# ------------------------------------------------------------------------------------------------ paper closed form
def test_paper_dense_closed_form():
    config = Qwen3Config.preset("qwen3-8b")
    r, hw = config.group_size, HARDWARE["B200"]
    d = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    previous = 1.0
    for lo in (16, 256, 1024, 4096, 32768):
        exact = tts_cost(config, prompt_len=1024, gen_lens=lo, num_samples=8).eflops
        paper = paper_dense_eflops(config, prompt_len=1024, gen_len=lo, num_samples=8)
        # the paper's form is the continuous sum: it exceeds ours by exactly (r + I) N D Lo
        assert paper - exact == pytest.approx((r + hw.intensity) * 8 * d * lo, rel=1e-6)
        rel = (paper - exact) / paper
        assert 0 < rel < min(previous, 1 / lo)
        previous = rel
    assert rel < 3.0e-5  # 2.99e-5 at Lo = 32768, Li = 1024, N = 8


# ------------------------------------------------------------------------------------------------ paper numbers
def test_kv_bytes_per_token_of_the_paper():
    names = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"]
    kv = [Qwen3Config.preset(n).kv_bytes_per_token() for n in names]
    assert kv == [114_688, 114_688, 147_456, 147_456, 163_840, 262_144]
    assert kv[0] * 32768 / 2**30 == 3.5 and kv[-1] * 32768 / 2**30 == 8.0
    # the model's KV bytes are the same number: one sample, every layer dense, per context token
    cost = tts_cost(Qwen3Config.preset("qwen3-32b"), prompt_len=32768, gen_lens=1, num_samples=1)
    assert cost.kv_bytes == kv[-1] * 32768


def test_parameters_in_the_papers_convention():
    assert paper_params(Qwen3Config.preset("qwen3-8b")) == pytest.approx(8.19e9, rel=0.01)
    assert paper_params(Qwen3Config.preset("qwen3-0.6b")) == pytest.approx(0.752e9, rel=0.01)
    moe = Qwen3Config.preset("qwen3-30b-a3b")
    assert paper_params(moe) == moe.num_active_params() < moe.num_params()


def test_phi_above_10_once_lo_reaches_4096():
    # The paper: "Phi is above 10x once Lo >= 4096" (docs/cost_model.md). On B200 with Li = 1024 this holds for
    # Qwen3 0.6B..8B and the 30B-A3B MoE, for every N (the prompt read is shared, so N = 32 is the lowest). It does
    # NOT hold for 14B (Phi = 9.7 at N = 1, 6.6 at N = 32) or 32B (7.0 / 4.8): they pass 10 only around Lo = 6K-9K.
    for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-30b-a3b"):
        for n in (1, 32):
            for lo in (4096, 8192, 32768):
                assert phi(Qwen3Config.preset(name), prompt_len=1024, gen_len=lo, num_samples=n) > 10, (name, n, lo)
    for name in ("qwen3-14b", "qwen3-32b"):
        assert phi(Qwen3Config.preset(name), prompt_len=1024, gen_len=4096, num_samples=1) < 10
        assert phi(Qwen3Config.preset(name), prompt_len=1024, gen_len=16384, num_samples=32) > 10


def test_phi_matches_its_closed_form():
    config = Qwen3Config.preset("qwen3-8b")
    r, i, p = config.group_size, HARDWARE["B200"].intensity, paper_params(config)
    d = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    for n, li, lo in [(1, 1024, 4096), (32, 1024, 32768), (3, 17, 5)]:
        want = (2 * r * li * d + r * d * (lo - 1) + i * d * (2 * li / n + lo - 1)) / (2 * p)
        assert phi(config, prompt_len=li, gen_len=lo, num_samples=n) == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, field", [
    (dict(num_samples=0), "num_samples"),
    (dict(gen_lens=0), "gen_lens"),
    (dict(gen_lens=[4, 0], num_samples=2), r"gen_lens\[1\]"),
    (dict(gen_lens=[4, 5, 6], num_samples=2), "gen_lens has 3 lengths but num_samples is 2"),
    (dict(prompt_len=0), "prompt_len"),
    (dict(hardware="B300"), "unknown hardware 'B300'; known: B200, H100-SXM"),
    (dict(attention=AttentionConfig(OracleTopK(topk=4), dense_layers=(3,))), "dense_layers has layer 3"),
])
def test_bad_inputs_name_the_field(kwargs, field):
    args = dict(prompt_len=4, gen_lens=5, num_samples=2) | kwargs
    with pytest.raises(ValueError, match=field):
        tts_cost(TINY, **args)


# ------------------------------------------------------------------------------------------------ from_counters
def fake_result(config: Qwen3Config, a: AttentionConfig, prompt_lens: list[int],
                lengths: list[list[int]]) -> GenerationResult:
    """A GenerationResult whose attended_tokens follow the policy definitions, as the engine counts them: decode
    step s attends Li + s + 1 tokens for each sample still running (length >= s + 2), summed per layer."""
    steps = max(max(lens) for lens in lengths) - 1
    attended = np.zeros((steps, config.num_hidden_layers), np.int64)
    for li, lens in zip(prompt_lens, lengths):
        for length in lens:
            for s in range(length - 1):
                for layer in range(config.num_hidden_layers):
                    dense = a.policy.kind == "dense" or layer in a.dense_layers
                    attended[s, layer] += li + s + 1 if dense else _kept(li + s + 1, a)
    shape = np.asarray(lengths).shape
    return GenerationResult(tokens=np.zeros(shape + (steps + 1,), np.int32),
                            lengths=np.asarray(lengths, np.int32), finish_reasons=np.full(shape, "length"),
                            attended_tokens=attended, prompt_lengths=np.asarray(prompt_lens, np.int32), attention=a)


@pytest.mark.parametrize("attention", POLICIES, ids=lambda a: a.describe())
def test_from_counters_equal_lengths_is_the_sum_of_tts_cost(attention):
    prompt_lens, n, lo = [5, 12, 1], 3, 21
    result = fake_result(TINY, attention, prompt_lens, [[lo] * n] * len(prompt_lens))
    for param_bytes in (False, True):
        got = from_counters(result, TINY, param_bytes=param_bytes)
        costs = [tts_cost(TINY, prompt_len=li, gen_lens=lo, num_samples=n, attention=attention,
                          param_bytes=param_bytes) for li in prompt_lens]
        assert got == functools.reduce(operator.add, costs)


@pytest.mark.parametrize("attention", POLICIES, ids=lambda a: a.describe())
def test_from_counters_unequal_lengths_is_the_brute_force_total(attention):
    prompt_lens, lengths = [6, 2], [[1, 14, 9], [30, 3, 30]]
    result = fake_result(TINY, attention, prompt_lens, lengths)
    for param_bytes in (False, True):
        got = from_counters(result, TINY, param_bytes=param_bytes)
        assert terms(got) == brute_force(TINY, attention, prompt_lens, lengths, param_bytes)


def test_from_counters_refuses_counters_of_another_shape():
    sparse = AttentionConfig(SlidingWindow(sink=1, local=2), dense_layers=(0,))
    result = fake_result(TINY, sparse, [9], [[12, 7]])
    short = dataclasses.replace(result, attended_tokens=result.attended_tokens[:-1])
    with pytest.raises(ValueError, match="attended_tokens has shape"):
        from_counters(short, TINY)


# ------------------------------------------------------------------------------------------------ properties
@st.composite
def policies(draw, layers: int, max_budget: int = 40) -> AttentionConfig:
    kind = draw(st.sampled_from(["dense", "topk", "block_topk", "sliding_window"]))
    if kind == "dense":
        return AttentionConfig()
    dense_layers = tuple(draw(st.sets(st.integers(0, layers - 1), max_size=layers)))
    sink, local = draw(st.integers(0, 8)), draw(st.integers(0, max_budget))
    if kind == "topk":
        return AttentionConfig(OracleTopK(sink=sink, local=local, topk=draw(st.integers(1, max_budget))),
                               dense_layers=dense_layers)
    if kind == "sliding_window":
        return AttentionConfig(SlidingWindow(sink=sink, local=max(local, 1)), dense_layers=dense_layers)
    return AttentionConfig(BlockTopK(sink=sink, local=local, block_size=draw(st.sampled_from([1, 2, 4, 8, 16])),
                                     block_topk=draw(st.integers(1, 8)),
                                     score=draw(st.sampled_from(["mean", "quest"]))), dense_layers=dense_layers)


MODELS = [TINY, TINY_TIED, Qwen3Config.preset("qwen3-0.6b"), Qwen3Config.preset("qwen3-8b"),
          Qwen3Config.preset("qwen3-30b-a3b")]


@st.composite
def jobs(draw):
    config = draw(st.sampled_from(MODELS))
    return dict(config=config, attention=draw(policies(config.num_hidden_layers)),
                prompt_len=draw(st.integers(1, 300)), num_samples=draw(st.integers(1, 6)),
                hardware=draw(st.sampled_from(sorted(HARDWARE))), param_bytes=draw(st.booleans()))


def _cost(job: dict, **changes) -> CostBreakdown:
    job = job | changes
    return tts_cost(job["config"], prompt_len=job["prompt_len"], gen_lens=job["gen_lens"],
                    num_samples=job["num_samples"], attention=job["attention"], hardware=job["hardware"],
                    param_bytes=job["param_bytes"])


def _no_less(big: CostBreakdown, small: CostBreakdown) -> None:
    for t in TERMS + ("compute_flops", "memory_bytes", "eflops", "seconds"):
        assert getattr(big, t) >= getattr(small, t), t


@settings(max_examples=80, deadline=None)
@given(jobs(), st.integers(1, 400), st.integers(0, 400), st.integers(1, 4))
def test_monotone_in_length_and_samples(job, lo, extra, more):
    job["gen_lens"] = lo
    cost = _cost(job)
    assert all(getattr(cost, t) >= 0 for t in TERMS) and cost.param_flops > 0
    _no_less(_cost(job, gen_lens=lo + extra), cost)
    _no_less(_cost(job, num_samples=job["num_samples"] + more), cost)


@settings(max_examples=80, deadline=None)
@given(jobs(), st.integers(1, 400), st.integers(1, 30))
def test_monotone_in_sparse_budget(job, lo, grow):
    a = job["attention"]
    job["gen_lens"] = lo
    if a.policy.kind == "dense":
        return
    field = {"topk": "topk", "block_topk": "block_topk", "sliding_window": "local"}[a.policy.kind]
    bigger = dataclasses.replace(a, policy=dataclasses.replace(a.policy, **{field: getattr(a.policy, field) + grow}))
    big, small = _cost(job, attention=bigger), _cost(job)
    assert big.attention_flops >= small.attention_flops
    # Up to the selection overhead: a bigger budget stays below its threshold (dense, nothing scored) longer.
    assert big.compute_flops >= small.compute_flops - small.scoring_flops
    # KV bytes too, for one sample. With N > 1 a bigger budget keeps the policy dense (prompt shared by the N
    # samples) for longer, which can read fewer bytes than N per-sample selections.
    job["num_samples"] = 1
    big, small = _cost(job, attention=bigger), _cost(job)
    assert big.kv_bytes >= small.kv_bytes and big.attention_flops >= small.attention_flops
    overhead = small.scoring_flops + small.intensity * small.summary_bytes
    assert big.eflops >= (small.eflops - overhead) * (1 - 1e-12)


@settings(max_examples=80, deadline=None)
@given(jobs(), st.lists(st.integers(1, 400), min_size=1, max_size=6))
def test_sparse_never_exceeds_dense_except_by_scoring(job, lens):
    job |= dict(gen_lens=lens, num_samples=len(lens))
    sparse, dense = _cost(job), _cost(job, attention=AttentionConfig())
    assert sparse.param_flops == dense.param_flops and sparse.param_bytes == dense.param_bytes
    assert sparse.attention_flops <= dense.attention_flops  # compute: for every N
    # memory: only for one sample. With N > 1 the dense layers read the prompt once for all samples but an active
    # sparse layer reads its selection per sample (see the next test), so no such bound holds.
    job |= dict(gen_lens=lens[0], num_samples=1)
    sparse, dense = _cost(job), _cost(job, attention=AttentionConfig())
    overhead = sparse.scoring_flops + sparse.intensity * sparse.summary_bytes
    assert sparse.kv_bytes <= dense.kv_bytes
    assert sparse.eflops <= dense.eflops + overhead * (1 + 1e-12)


def test_sparse_layers_share_the_prompt_only_below_their_threshold():
    # Best-of-32 with a 2K budget over a 1K prompt: below the threshold a sparse layer is dense and reads the
    # prompt once for all 32 samples (the engine runs the cascade); past it each sample reads its own selection,
    # which costs more than dense until the context is well past the budget.
    config = Qwen3Config.preset("qwen3-8b")
    block = AttentionConfig(BlockTopK(block_size=16, block_topk=128, local=0))

    def cost(lo, a):
        return tts_cost(config, prompt_len=1024, gen_lens=lo, num_samples=32, attention=a)
    dense = AttentionConfig()
    assert cost(1024, block).eflops == cost(1024, dense).eflops  # never active: contexts <= 2047 < 2052 + 16
    assert cost(1500, block).eflops > 1.2 * cost(1500, dense).eflops  # active since 2068: 32 selections > prompt
    assert cost(4096, block).eflops < cost(4096, dense).eflops
    assert cost(32768, block).eflops < cost(32768, dense).eflops / 3