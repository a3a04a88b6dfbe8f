"""The continuous-batching engine (generate(max_num_seqs=...)): greedy parity with transformers, equality with the
static batch in float32 for every policy (counters of what ran included), samples independent of slot,
neighbours, arrival order, chunk size, slot count and preemption in bfloat16, a request over its up-front
reservation that completes, "data" meshes, skipped pairs and on_finish streaming, and bad arguments refused
before compute."""

from __future__ import annotations

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import kinetics_jax as kj
from kinetics_jax.cache import PagedLayout
from kinetics_jax.sampling import RepetitionStop, SamplingConfig, generate
from kinetics_jax.sharding import meshes
from kinetics_jax.policies import AttentionConfig, BlockTopK, OracleTopK, SlidingWindow, StridedBlockTopK

GREEDY = SamplingConfig.greedy_config()
HOT = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)  # every token possible: samples diverge fast
EOS = (7, 9, 11)  # ids a random 160-token model emits now and then: ragged lengths
POLICIES = [
    AttentionConfig(),
    AttentionConfig(tile_tokens=16),  # one-page tiles: prompts of a full page or more take the shared read
    AttentionConfig(BlockTopK(sink=4, local=0, block_size=16, block_topk=1)),
    AttentionConfig(BlockTopK(sink=5, local=7, block_size=16, block_topk=1, score="quest"), backend="pallas"),
    AttentionConfig(OracleTopK(sink=4, local=4, topk=8)),
    AttentionConfig(SlidingWindow(sink=4, local=12), dense_layers=()),
    AttentionConfig(StridedBlockTopK(sink=5, local=3, block_size=8, block_topk=2)),
]


def _prompts(lengths, seed=0, vocab=160):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finish_reasons, b.finish_reasons)


@pytest.fixture(autouse=True)
def _free_compiled_programs():
    """Each test compiles its own engine programs (about 2,000 memory mappings of code each time on XLA:CPU):
    drop them after the test, so the module stays far below the per-process mapping limit (see conftest)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="module")
def models(hf_checkpoints):
    path = hf_checkpoints["dense_g4_sharded"]
    return {dtype: kj.load_hf_checkpoint(path, dtype=dtype) for dtype in ("float32", "bfloat16")}


@pytest.mark.parametrize("name", ["dense_g4_sharded", "moe_mixed_sharded"])
def test_greedy_equals_transformers_generate(name, hf_checkpoints, hf_models):
    """9 sequences through 4 slots: slots are refilled, and every sample is transformers' greedy output."""
    model = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    prompts = _prompts([5, 23, 40])
    result = generate(model, prompts, num_samples=3, max_new_tokens=48, sampling=GREEDY, max_num_seqs=4,
                      chunk_steps=8)
    for p, prompt in enumerate(prompts):
        with torch.no_grad():
            out = hf_models[name].generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                           dtype=torch.long), max_new_tokens=48, do_sample=False, pad_token_id=0)
        ref = out[0, len(prompt):].tolist()
        for s in range(3):
            assert result.sequences(p, s) == ref, (p, s)
    assert result.stats.prefills == 3 and result.stats.preemptions == 0


def _expected_counters(result, lengths, attention) -> np.ndarray:
    """Sample (p, s) at its step j holds n = prompt + j + 1 tokens and reads the policy's attended(n) in a sparse
    layer (n in a dense one); nothing else is read (empty and finished slots read nothing)."""
    steps, layers = result.attended_tokens.shape
    dense = attention.dense_layer_mask(layers)
    expected = np.zeros((steps, layers), np.int64)
    for p, length in enumerate(lengths):
        for s in range(result.lengths.shape[1]):
            j = np.arange(result.lengths[p, s] - 1)
            n = length + j + 1
            expected[j] += np.where(dense, n[:, None], np.asarray(attention.policy.attended(n))[:, None])
    return expected


@pytest.mark.parametrize("attention", POLICIES, ids=AttentionConfig.describe)
def test_float32_samples_and_counters_equal_the_static_batch(attention, models):
    """Samples and counters equal the static batch's, and the counters are what the policy reads (the 2-token
    prompt is shorter than the sinks)."""
    lengths = [2, 23, 40, 70]
    prompts = _prompts(lengths, seed=1)
    kwargs = dict(num_samples=3, max_new_tokens=40, sampling=HOT, attention=attention, eos_token_ids=EOS, seed=3)
    static = generate(models["float32"], prompts, **kwargs)
    result = generate(models["float32"], prompts, max_num_seqs=5, chunk_steps=6, **kwargs)
    _same(result, static)
    assert len(set(result.lengths.ravel().tolist())) > 3  # ragged: slots were refilled mid-run
    np.testing.assert_array_equal(result.attended_tokens, static.attended_tokens)
    assert result.attended_tokens.shape[0] == result.lengths.max() - 1
    np.testing.assert_array_equal(result.attended_tokens, _expected_counters(result, lengths, attention))


@pytest.mark.parametrize("attention", POLICIES[1:3], ids=AttentionConfig.describe)
def test_bfloat16_samples_do_not_depend_on_slot_neighbours_order_chunk_or_slots(attention, models):
    """bfloat16, where batch-dependent numerics would show: the same samples alone, beside other prompts, in
    reverse arrival order (stream ids fixed), with another chunk size and with another slot count."""
    model = models["bfloat16"]
    prompts = _prompts([5, 23, 40, 70], seed=2)
    kwargs = dict(num_samples=3, max_new_tokens=48, sampling=HOT, attention=attention, eos_token_ids=EOS)
    run = lambda ps, ids, **kw: generate(model, ps, stream_ids=ids, **kwargs, **kw)
    base = run(prompts, [0, 1, 2, 3], max_num_seqs=4, chunk_steps=8)
    alone = run([prompts[2]], [2], max_num_seqs=4, chunk_steps=8)
    np.testing.assert_array_equal(alone.tokens[0], base.tokens[2])
    reverse = run(prompts[::-1], [3, 2, 1, 0], max_num_seqs=4, chunk_steps=8)
    np.testing.assert_array_equal(reverse.tokens[::-1], base.tokens)
    np.testing.assert_array_equal(run(prompts, [0, 1, 2, 3], max_num_seqs=4, chunk_steps=3).tokens, base.tokens)
    np.testing.assert_array_equal(run(prompts, [0, 1, 2, 3], max_num_seqs=7, chunk_steps=8).tokens, base.tokens)


def test_preempted_samples_regenerate_the_same_tokens(models):
    """A pool of 14 pages for 12 sequences of up to 70 + 60 tokens: sequences are preempted and recomputed, and
    every sample equals the run with room for all (bfloat16)."""
    model = models["bfloat16"]
    prompts = _prompts([5, 23, 40, 70], seed=0)
    kwargs = dict(num_samples=3, max_new_tokens=60, sampling=HOT, eos_token_ids=EOS, max_num_seqs=4,
                  chunk_steps=8)
    free = generate(model, prompts, **kwargs)
    page = PagedLayout(16).pool_bytes(model.config, 1, jnp.bfloat16)
    tight = generate(model, prompts, cache_budget_bytes=14 * page, **kwargs)
    assert tight.stats.preemptions > 0 and tight.stats.peak_pages <= 13 and free.stats.preemptions == 0
    _same(tight, free)


def test_a_request_over_its_reservation_completes(models):
    """16 samples x (40 + 200) tokens reserve 16 x 15 + 2 = 242 pages up front; the budget holds 64. The static
    batch refuses it; with EOS ending the samples early, the continuous engine completes it."""
    model = models["float32"]
    page = PagedLayout(16).pool_bytes(model.config, 1, jnp.float32)
    kwargs = dict(num_samples=16, max_new_tokens=200, sampling=HOT, eos_token_ids=EOS,
                  cache_budget_bytes=64 * page)
    prompts = _prompts([40], seed=5)
    with pytest.raises(ValueError, match="the cache budget is"):
        generate(model, prompts, **kwargs)
    result = generate(model, prompts, max_num_seqs=8, chunk_steps=8, **kwargs)
    assert (result.finish_reasons != "running").all() and result.stats.peak_pages <= 63
    unlimited = generate(model, prompts, max_num_seqs=8, chunk_steps=8,
                         **{**kwargs, "cache_budget_bytes": None})
    _same(result, unlimited)


def test_repetition_stop_equals_the_static_batch():
    config = kj.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    from flax import nnx
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))
    stop = RepetitionStop(block=4, repeats=3, window=16)
    kwargs = dict(max_new_tokens=120, sampling=GREEDY, repetition=stop, num_samples=2)
    prompts = [[1, 2, 3], [7, 7, 9, 30, 2], [4, 5]]
    static = generate(model, prompts, **kwargs)
    result = generate(model, prompts, max_num_seqs=2, chunk_steps=16, **kwargs)
    _same(result, static)
    assert (result.finish_reasons == "repetition").any()


def test_a_model_mesh_gives_the_same_samples(models):
    model = models["float32"]
    prompts = _prompts([5, 40], seed=6)
    kwargs = dict(num_samples=2, max_new_tokens=24, sampling=HOT, max_num_seqs=3, chunk_steps=8)
    mesh = meshes.make_mesh((1, 2), jax.devices()[:2])
    _same(generate(model, prompts, mesh=mesh, **kwargs), generate(model, prompts, **kwargs))


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_num_seqs=0), "max_num_seqs must be an integer >= 1"),
    (dict(max_num_seqs=True), "max_num_seqs"),
    (dict(max_num_seqs=2.0), "max_num_seqs"),
    (dict(max_num_seqs=2, chunk_steps=0), "chunk_steps must be an integer >= 1"),
    (dict(max_num_seqs=2, cache_budget_bytes=4096), "the longest prompt \\(40 tokens\\)"),
    (dict(max_num_seqs=2, num_samples=10**9), "1000000000 samples x 2 prompts .* GiB of host memory"),
])
def test_bad_arguments_are_refused_before_compute(kwargs, message, models):
    model = models["float32"]
    for fn in (generate, kj.sampling.engine.check):
        with pytest.raises(ValueError, match=message):
            fn(model, _prompts([40, 5]), max_new_tokens=8, **kwargs)


def test_a_data_axis_gives_the_same_samples_and_counters(models):
    """Slots split over "data" (2 shards of 2 slots, each its own pool; and a (2, 2) mesh with the KV heads
    over "model" too): every sample and the summed counters equal the single-shard run's in float32."""
    model = models["float32"]
    prompts = _prompts([5, 23, 40, 70, 17], seed=8)
    kwargs = dict(num_samples=3, max_new_tokens=40, sampling=HOT, eos_token_ids=EOS, max_num_seqs=4,
                  chunk_steps=6, attention=POLICIES[2])
    base = generate(model, prompts, **kwargs)
    for shape in ((2, 1), (2, 2)):
        result = generate(model, prompts, mesh=meshes.make_mesh(shape, jax.devices()[:shape[0] * shape[1]]),
                          **kwargs)
        _same(result, base)
        np.testing.assert_array_equal(result.attended_tokens, base.attended_tokens)
        assert result.stats.prefills == len(prompts)


def test_bfloat16_samples_on_a_data_axis_do_not_depend_on_their_shard_or_neighbours(models):
    """bfloat16 on 2 data shards: a prompt's samples are the same whichever shard claims it (arrival order
    reversed) and alone. (Against the single-shard run they differ in bfloat16: the partitioned program is
    another XLA program, whose fusions round bfloat16 intermediates elsewhere; float32 is equal, above.)"""
    model = models["bfloat16"]
    mesh = meshes.make_mesh((2, 1), jax.devices()[:2])
    prompts = _prompts([5, 23, 40, 70, 17], seed=8)
    kwargs = dict(num_samples=3, max_new_tokens=40, sampling=HOT, eos_token_ids=EOS, max_num_seqs=4,
                  chunk_steps=6, mesh=mesh)
    base = generate(model, prompts, stream_ids=[0, 1, 2, 3, 4], **kwargs)
    reverse = generate(model, prompts[::-1], stream_ids=[4, 3, 2, 1, 0], **kwargs)
    np.testing.assert_array_equal(reverse.tokens[::-1], base.tokens)
    alone = generate(model, [prompts[3]], stream_ids=[3], **kwargs)
    np.testing.assert_array_equal(alone.tokens[0], base.tokens[3])


def test_slots_the_data_axis_does_not_divide_are_refused(models):
    mesh = meshes.make_mesh((2, 1), jax.devices()[:2])
    for fn in (generate, kj.sampling.engine.check):
        with pytest.raises(ValueError, match="max_num_seqs \\(3\\) must be a multiple of the mesh's 'data' axis"):
            fn(models["float32"], _prompts([5]), max_new_tokens=4, max_num_seqs=3, mesh=mesh)


def test_skipped_samples_do_not_run_and_on_finish_streams_the_rest(models):
    """A resumed job skips its finished (prompt, sample) pairs: the others equal the full run's, the skipped
    are empty ("skipped"), and on_finish gets each sample that ran exactly once, as it finished (several
    calls); the static batch calls it once with every sample, and refuses skip."""
    model = models["float32"]
    prompts = _prompts([5, 23, 40], seed=9)
    kwargs = dict(num_samples=3, max_new_tokens=30, sampling=HOT, eos_token_ids=EOS, max_num_seqs=2,
                  chunk_steps=4)
    full = generate(model, prompts, **kwargs)
    skip = {(0, 0), (1, 2), (2, 0), (2, 1), (2, 2)}
    calls = []
    part = generate(model, prompts, skip=skip, on_finish=calls.append, **kwargs)
    got = [sample for call in calls for sample in call]
    assert len(calls) > 1 and sorted((f.prompt, f.sample) for f in got) == sorted(
        (p, s) for p in range(3) for s in range(3) if (p, s) not in skip)
    for f in got:
        assert f.tokens == full.sequences(f.prompt, f.sample)
        assert f.finish_reason == full.finish_reasons[f.prompt, f.sample]
    for p in range(3):
        for s in range(3):
            if (p, s) in skip:
                assert part.finish_reasons[p, s] == "skipped" and part.lengths[p, s] == 0
            else:
                assert part.sequences(p, s) == full.sequences(p, s)
    assert part.stats.prefills == 2  # prompt 2 never ran
    static_calls = []
    static = generate(model, prompts, on_finish=static_calls.append, **{**kwargs, "max_num_seqs": None})
    assert len(static_calls) == 1 and static_calls[0] == static.finished_samples()
    for bad, message in [({(0, 3)}, "skip: \\(0, 3\\) is not a \\(prompt, sample\\) pair"),
                         ({(True, 0)}, "skip: \\(True, 0\\)"), (5, "skip must be a collection")]:
        with pytest.raises(ValueError, match=message):
            generate(model, prompts, skip=bad, **kwargs)
    with pytest.raises(ValueError, match="skip needs the continuous engine"):
        generate(model, prompts, skip=skip, **{**kwargs, "max_num_seqs": None})
