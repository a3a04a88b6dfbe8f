"""generate(): greedy parity with transformers, cached logits vs full forward, stopping, reproducibility, errors."""

from __future__ import annotations

import contextlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import AbstractMesh

import kinetics_jax as kj
from kinetics_jax.cache import PagedLayout
from kinetics_jax.sampling import RepetitionStop, SamplingConfig, generate
from kinetics_jax.sampling.decode import decode_step
from kinetics_jax.sampling.prefill import prefill
from kinetics_jax.sharding import meshes, planning
from kinetics_jax.sharding.axes import MESH_AXES
from kinetics_jax.policies import AttentionConfig, BlockTopK

GREEDY = SamplingConfig.greedy_config()


def _prompts(lengths, seed=0, vocab=160):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).tolist() for n in lengths]


def _hf_greedy(hf, prompt, new_tokens, eos=None):
    with torch.no_grad():  # explicit mask: generate() would treat prompt tokens equal to pad_token_id as padding
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", ["dense_g4_sharded", "moe_mixed_sharded"])
def test_greedy_equals_transformers_generate(name, hf_checkpoints, hf_models):
    model = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    prompts = _prompts([5, 23, 40])  # one page partial, 1 shared page + partial, 2 shared pages + partial
    result = generate(model, prompts, num_samples=3, max_new_tokens=64, sampling=GREEDY)
    assert result.tokens.shape == (3, 3, 64)
    for p, prompt in enumerate(prompts):
        ref = _hf_greedy(hf_models[name], prompt, 64)
        for s in range(3):  # greedy: every sample identical
            assert result.sequences(p, s) == ref, (p, s)
    assert (result.finish_reasons == "length").all() and (result.lengths == 64).all()


def test_eos_stops_each_sample_like_transformers(hf_checkpoints, hf_models):
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_g4_sharded"], dtype=jnp.float32)
    prompts = _prompts([7, 30], seed=4)
    free = generate(model, prompts, max_new_tokens=40, sampling=GREEDY)
    eos = free.sequences(0, 0)[9]  # a token prompt 0 emits at step 9: it must stop there
    result = generate(model, prompts, max_new_tokens=40, sampling=GREEDY, eos_token_ids=[eos])
    for p, prompt in enumerate(prompts):
        ref = _hf_greedy(hf_models["dense_g4_sharded"], prompt, 40, eos=eos)
        ref = ref[:ref.index(eos) + 1] if eos in ref else ref
        assert result.sequences(p, 0) == ref
        assert result.finish_reasons[p, 0] == ("eos" if ref[-1] == eos else "length")
    assert result.lengths[0, 0] <= 10
    assert (result.tokens[0, 0, result.lengths[0, 0]:] == -1).all()


@pytest.mark.parametrize("name", ["dense_tied_g2", "moe_norm_topk"])
def test_cached_logits_equal_full_forward_at_every_step(name, hf_checkpoints):
    """Teacher-forced: prefill, then decode_step token by token; every step's logits match model(prefix)."""
    model = kj.load_hf_checkpoint(hf_checkpoints[name], dtype=jnp.float32)
    page_size, new = 8, 30
    prompts = _prompts([11, 20], seed=2)
    plan = PagedLayout(page_size).plan([11, 20], 2, new)
    padded = np.zeros((2, 32), np.int32)
    for i, p in enumerate(prompts):
        padded[i, :len(p)] = p
    attention = AttentionConfig(page_size=page_size)
    logits, cache = prefill(model, jnp.asarray(padded), jnp.asarray([11, 20]), jnp.asarray(plan.prefill_writes(32)),
                            plan.num_pages, attention)
    continuation = np.random.default_rng(3).integers(0, 160, (4, new))  # sequences: (p0,s0) (p0,s1) (p1,s0) (p1,s1)
    full = [np.asarray(model(jnp.asarray([prompts[b // 2] + continuation[b].tolist()])))[0] for b in range(4)]
    step_fn = jax.jit(decode_step, static_argnames=("attention",))
    for step in range(new - 1):
        positions = np.repeat([11, 20], 2) + step
        logits, cache, counts = step_fn(model, cache, jnp.asarray(continuation[:, step], jnp.int32),
                                        jnp.asarray(positions, jnp.int32), jnp.asarray(plan.page_table),
                                        jnp.ones(4, bool), attention=attention)
        assert (np.asarray(counts) == positions + 1).all()  # [L, B]: each layer reads each row's tokens
        for b in range(4):  # the full forward's logits at the fed token's position
            # float32 on both paths, different summation order: ~1e-7 in practice.
            np.testing.assert_allclose(np.asarray(logits[b]), full[b][positions[b]], atol=1e-4, rtol=0)


def test_sampling_is_reproducible_and_independent_of_n(hf_checkpoints):
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_tied_g2"], dtype=jnp.float32)
    prompts = _prompts([6, 17], seed=5)
    config = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    a = generate(model, prompts, num_samples=2, max_new_tokens=20, sampling=config, seed=11)
    b = generate(model, prompts, num_samples=2, max_new_tokens=20, sampling=config, seed=11)
    more = generate(model, prompts, num_samples=5, max_new_tokens=20, sampling=config, seed=11)
    alone = generate(model, prompts[1:], num_samples=1, max_new_tokens=20, sampling=config, seed=11)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(more.tokens[:, :2], a.tokens)
    assert not np.array_equal(a.tokens[0, 0], a.tokens[0, 1])  # samples differ from each other
    other_seed = generate(model, prompts, num_samples=2, max_new_tokens=20, sampling=config, seed=12)
    assert not np.array_equal(other_seed.tokens, a.tokens)
    # Prompt index is part of the key: a prompt alone in the batch is prompt 0, so it draws prompt 0's stream.
    assert alone.tokens.shape == (1, 1, 20)


def test_counters_sum_attended_tokens(hf_checkpoints):
    model = kj.load_hf_checkpoint(hf_checkpoints["moe_mixed_sharded"], dtype=jnp.float32)
    result = generate(model, _prompts([9, 14]), num_samples=2, max_new_tokens=12, sampling=GREEDY)
    steps, layers = result.attended_tokens.shape
    assert (steps, layers) == (11, 5)
    expected = [sum(2 * (length + step + 1) for length in (9, 14)) for step in range(steps)]
    np.testing.assert_array_equal(result.attended_tokens, np.tile(np.asarray(expected)[:, None], (1, layers)))


def _first_repetition(seq: list[int], stop: RepetitionStop) -> int | None:
    """numpy statement of the rule: the first generated length at which it fires."""
    for n in range(stop.window, len(seq) + 1):
        blocks = np.asarray(seq[n - stop.window:n]).reshape(-1, stop.block)
        if np.all(blocks == blocks[-1], axis=1).sum() >= stop.repeats:
            return n
    return None


def test_repetition_stop_fires_exactly_where_the_rule_says():
    config = kj.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    from flax import nnx
    model = kj.Qwen3ForCausalLM(config, rngs=nnx.Rngs(0))
    stop = RepetitionStop(block=4, repeats=3, window=16)
    prompts = [[1, 2, 3], [7, 7, 9, 30, 2]]
    free = generate(model, prompts, max_new_tokens=120, sampling=GREEDY)
    stopped = generate(model, prompts, max_new_tokens=120, sampling=GREEDY, repetition=stop)
    fired = 0
    for p in range(2):
        expected = _first_repetition(free.sequences(p, 0), stop)
        if expected is None:
            assert stopped.finish_reasons[p, 0] == "length" and stopped.lengths[p, 0] == 120
        else:
            fired += 1
            assert stopped.finish_reasons[p, 0] == "repetition" and stopped.lengths[p, 0] == expected
            assert stopped.sequences(p, 0) == free.sequences(p, 0)[:expected]
    assert fired >= 1  # greedy decoding of a random model falls into a loop


def test_page_budget_and_bad_input(hf_checkpoints):
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_tied_g2"], dtype=jnp.float32)
    ok = [[1, 2, 3]]
    cases = [
        (dict(prompts=[[]], max_new_tokens=4), "prompt 0 is empty"),
        (dict(prompts=[], max_new_tokens=4), "prompts is empty"),
        (dict(prompts=ok, max_new_tokens=4, num_samples=0), "num_samples"),
        (dict(prompts=ok, max_new_tokens=0), "max_new_tokens"),
        (dict(prompts=[[1, 160]], max_new_tokens=4), "token id 160"),
        (dict(prompts=[[1, -3]], max_new_tokens=4), "token id -3"),
        (dict(prompts=ok, max_new_tokens=40_000), "max_position_embeddings"),
        (dict(prompts=ok * 4, max_new_tokens=500, num_samples=8, cache_budget_bytes=10_000), "KV cache"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(model, **kwargs)
    for kwargs in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.2)):
        with pytest.raises(ValueError):
            SamplingConfig(**kwargs)


def test_stream_ids_make_samples_independent_of_the_batch(hf_checkpoints):
    model = kj.load_hf_checkpoint(hf_checkpoints["dense_tied_g2"], dtype=jnp.float32)
    prompts = _prompts([6, 17, 9], seed=8)
    config = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    together = generate(model, prompts, num_samples=2, max_new_tokens=12, sampling=config, seed=3,
                        stream_ids=[10, 11, 12])
    alone = generate(model, prompts[2:], num_samples=2, max_new_tokens=12, sampling=config, seed=3, stream_ids=[12])
    np.testing.assert_array_equal(alone.tokens[0], together.tokens[2])
    with pytest.raises(ValueError, match="stream_ids"):
        generate(model, prompts, max_new_tokens=4, stream_ids=[0, 1])


# ------------------------------------------------------------------ nothing silently wrong: checks before compute
TINY = kj.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
TINY_PROMPTS = [[1, 2, 3], [7, 7, 9, 30, 2], [4, 5]]


@pytest.fixture(scope="module")
def tiny_model() -> kj.Qwen3ForCausalLM:
    return kj.Qwen3ForCausalLM(TINY, rngs=nnx.Rngs(0))


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fails the test (instead of hanging it) if the block runs longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_absurd_num_samples_is_refused_from_arithmetic(tiny_model):
    """num_samples=10**8 used to sit minutes in the per-sample plan loop before the budget check; the cache is
    now sized in closed form (O(prompts)) and the request refused at once, naming the numbers."""
    model = tiny_model
    start = time.perf_counter()
    with _deadline(5), pytest.raises(ValueError, match=r"100000000 samples x 3 prompts .* need 300000064 KV cache "
                                                       r"pages of 16 tokens .*iB of KV cache per device; the "
                                                       r"cache budget is"):
        generate(model, TINY_PROMPTS, num_samples=10**8, max_new_tokens=4)
    # under a huge budget, the int32 page ids / rows are the limit
    with _deadline(5), pytest.raises(ValueError, match=r"3000000000 decode rows; page ids and rows are int32"):
        generate(model, TINY_PROMPTS, num_samples=10**9, max_new_tokens=4, cache_budget_bytes=2**62)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("lengths,n,new,attention,mesh_shape", [
    ([11, 20, 3], 3, 40, AttentionConfig(), (1, 1)),
    ([16, 1, 33, 47], 5, 17, AttentionConfig(BlockTopK(block_topk=2, sink=4)), (2, 1)),
    ([100, 5, 9], 4, 64, AttentionConfig(BlockTopK(block_topk=2, score="quest", block_size=8)), (4, 2)),
    ([30, 31], 6, 1, AttentionConfig(page_size=32), (2, 4)),  # "model" 4 > 2 KV heads: copies
])
def test_cache_size_closed_form_equals_the_plans(lengths, n, new, attention, mesh_shape, tiny_model):
    """The arithmetic the budget check uses gives exactly the pages and bytes of the plans it replaces."""
    model = tiny_model
    mesh = AbstractMesh(mesh_shape, MESH_AXES)
    _, plans = planning.request_plans(lengths, n, new, attention, mesh_shape[0])
    pages = planning.cache_pages_per_shard(lengths, n, new, attention, mesh_shape[0])
    assert pages == max(plan.num_pages for plan in plans)
    # K and V: page_size slots each per page; a summary: one slot's worth per page; every KV head copy counted
    slots = 2 * attention.cache_page_size + len(attention.summaries)
    pool = pages * slots * TINY.num_hidden_layers * TINY.num_key_value_heads * TINY.head_dim * \
        np.dtype(model.dtype).itemsize
    assert planning.kv_cache_bytes_per_device(pages, TINY, model.dtype, attention, mesh) == (
        pool * meshes.kv_replicas(TINY, mesh) // mesh_shape[1])


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_samples=True), r"num_samples must be an integer >= 1, got True, a bool"),
    (dict(num_samples=2.0), r"num_samples must be an integer >= 1, got 2.0, a float"),
    (dict(max_new_tokens=np.float64(3)), r"max_new_tokens must be an integer >= 1"),
    (dict(seed=1.5), r"seed must be an integer in \[0, 4294967295\] .*got 1.5, a float"),
    (dict(seed=True), r"seed must be an integer .*got True, a bool"),
    (dict(seed=-1), r"seed must be an integer in \[0, 4294967295\] .*got -1"),
    (dict(seed=2**32), r"seed must be an integer in \[0, 4294967295\] .*got 4294967296"),
    (dict(stream_ids=[True, 1, 2]), r"stream_ids\[0\] must be an integer .*got True, a bool"),
    (dict(stream_ids=np.array([0, 1, 2]) == 1), r"stream_ids\[0\] must be an integer .*a bool"),
    (dict(stream_ids=[0, 2**32 + 5, 1]), r"stream_ids\[1\] must be an integer in \[0, 4294967295\]"),
    (dict(stream_ids=[0, -1, 1]), r"stream_ids\[1\]"),
    (dict(stream_ids=[0.0, 1.0, 2.0]), r"stream_ids\[0\] must be an integer .*a float"),
    (dict(stream_ids=[0, 1]), r"stream_ids must be 3 integers"),
    (dict(vocab_size=20.5), r"vocab_size must be an integer in \[1, 32\]"),
    (dict(eos_token_ids=[1.5]), r"eos_token_ids\[0\] must be an integer"),
    (dict(eos_token_ids=[32]), r"eos_token_ids\[0\] must be an integer in \[0, 31\]"),
    (dict(cache_budget_bytes=0), r"cache_budget_bytes must be an integer >= 1"),
])
def test_bad_integers_are_refused_before_compute(kwargs, message, tiny_model):
    """Before, seed=1.5 and seed=True ran as 1, stream id 2**32 + 5 wrapped to 5, a bool stream id passed, and
    seed=2**31 raised OverflowError inside; every case is now one ValueError naming the argument."""
    model = tiny_model
    with _deadline(5), pytest.raises(ValueError, match=message):
        generate(model, TINY_PROMPTS, **{"max_new_tokens": 3, **kwargs})


def test_repetition_stop_fields_follow_the_integer_rule():
    assert RepetitionStop(block=np.int64(64)) == RepetitionStop() and type(RepetitionStop(np.int32(8)).block) is int
    with pytest.raises(ValueError, match=r"RepetitionStop.block must be an integer, got 64.0, a float"):
        RepetitionStop(block=64.0)


def test_numpy_integers_and_full_uint32_seeds_are_taken(tiny_model):
    """np.int64 / np.int32 sizes, seeds and stream ids equal the Python ints; any seed or stream id in
    [0, 2**32) runs (2**31 overflowed int32 before), and distinct seeds give distinct samples."""
    model = tiny_model
    config = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    run = lambda **kw: generate(model, TINY_PROMPTS, sampling=config, **{"num_samples": 2, "max_new_tokens": 6,
                                                                         "seed": 3, **kw}).tokens
    plain = run(stream_ids=[5, 6, 7])
    np.testing.assert_array_equal(run(num_samples=np.int64(2), max_new_tokens=np.int32(6), seed=np.int64(3),
                                      stream_ids=np.array([5, 6, 7], np.uint64)), plain)
    high = run(seed=2**31, stream_ids=[5, 6, 2**32 - 1])
    assert not np.array_equal(high, plain) and not np.array_equal(run(seed=2**32 - 1), run(seed=0))
    np.testing.assert_array_equal(high, run(seed=np.uint32(2**31), stream_ids=[5, 6, np.uint32(2**32 - 1)]))
