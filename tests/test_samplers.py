"""Samplers: kept sets equal a numpy reference of transformers' warpers, draws follow the kept distribution
(chi-square), padded vocabulary ids never appear, and keys make a row's draw independent of its batch."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from absl import flags as absl_flags

from kinetics_jax.sampling import SamplingConfig, filtered_logits, sample, sample_keys
from kinetics_jax.sampling import flags as sampling_flags


def _reference_kept(logits: np.ndarray, config: SamplingConfig, vocab_size: int) -> np.ndarray:
    """Boolean kept mask in float64, written the way transformers' warpers are (ascending-sort top-p)."""
    x = logits.astype(np.float64).copy()
    x[vocab_size:] = -np.inf
    x = x / config.temperature
    if config.top_k:
        x[x < np.sort(x)[-min(config.top_k, len(x))]] = -np.inf
    if config.top_p < 1:
        order = np.argsort(x)                      # ascending
        probs = np.exp(x[order] - x.max())
        probs /= probs.sum()
        remove = np.cumsum(probs) <= 1 - config.top_p
        remove[-1] = False                         # always keep the most likely token
        x[order[remove]] = -np.inf
    if config.min_p > 0:
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        x[probs < config.min_p * probs.max()] = -np.inf
    return np.isfinite(x)


CONFIGS = [SamplingConfig(), SamplingConfig(temperature=1.0, top_k=0, top_p=0.9),
           SamplingConfig(temperature=0.8, top_k=50, top_p=1.0), SamplingConfig(temperature=1.3, top_k=0, top_p=1.0,
                                                                                min_p=0.05),
           SamplingConfig(temperature=0.6, top_k=20, top_p=0.95, min_p=0.1)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_kept_sets_equal_numpy_reference(config):
    vocab, padded = 300, 320
    logits = np.random.default_rng(0).normal(scale=3.0, size=(16, padded)).astype(np.float32)
    ours = np.isfinite(np.asarray(filtered_logits(jnp.asarray(logits), config, vocab)))
    for row in range(16):
        ref = _reference_kept(logits[row], config, vocab)
        np.testing.assert_array_equal(ours[row], ref, err_msg=f"row {row}")


UNFILTERED = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)


@pytest.mark.parametrize("config", CONFIGS[:4] + [UNFILTERED], ids=str)
def test_draws_follow_the_kept_distribution(config):
    """Chi-square goodness of fit of 20,000 draws against the renormalised kept distribution."""
    vocab, draws = 40, 20_000
    logits = np.random.default_rng(1).normal(scale=1.5, size=(vocab + 8,)).astype(np.float32)
    kept = _reference_kept(logits, config, vocab)
    x = np.where(kept, logits.astype(np.float64) / config.temperature, -np.inf)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    keys = sample_keys(123, jnp.zeros(draws, jnp.int32), jnp.arange(draws), 0)
    ids = np.asarray(jax.jit(lambda l, k: sample(l, k, config, vocab))(jnp.tile(jnp.asarray(logits), (draws, 1)), keys))
    counts = np.bincount(ids, minlength=vocab + 8)
    assert counts[~kept].sum() == 0
    expected = probs[kept] * draws
    stat = float(np.sum((counts[kept] - expected) ** 2 / expected))
    df = int(kept.sum()) - 1
    p_value = float(jax.scipy.special.gammaincc(df / 2, stat / 2)) if df else 1.0
    assert p_value > 1e-3, (stat, df, p_value)  # a correct sampler fails this 1 time in 1000


def test_greedy_is_argmax_over_the_real_vocabulary():
    logits = np.random.default_rng(2).normal(size=(5, 64)).astype(np.float32)
    logits[:, 60:] = 100.0  # padding rows of the embedding must never win
    for config in (SamplingConfig.greedy_config(), SamplingConfig(temperature=0.01)):
        ids = np.asarray(sample(jnp.asarray(logits), sample_keys(0, jnp.zeros(5, int), jnp.arange(5), 0), config, 60))
        np.testing.assert_array_equal(ids, logits[:, :60].argmax(-1))


def test_padded_ids_never_sampled():
    logits = jnp.zeros((4000, 16)).at[:, 12:].set(5.0)
    keys = sample_keys(1, jnp.zeros(4000, int), jnp.arange(4000), 3)
    ids = np.asarray(sample(logits, keys, SamplingConfig(temperature=1.0, top_k=0, top_p=1.0), 12))
    assert ids.max() < 12 and len(np.unique(ids)) == 12


def test_row_draws_do_not_depend_on_the_batch():
    """Sample (prompt 1, index 2) draws the same token whatever else shares the batch."""
    logits = np.random.default_rng(3).normal(size=(1, 100)).astype(np.float32)
    config = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    alone = sample(jnp.asarray(logits), sample_keys(5, jnp.array([1]), jnp.array([2]), 7), config, 100)
    prompts, samples = jnp.array([0, 0, 1, 1, 1, 1]), jnp.array([0, 1, 0, 1, 2, 3])
    batch = sample(jnp.tile(jnp.asarray(logits), (6, 1)), sample_keys(5, prompts, samples, 7), config, 100)
    assert int(batch[4]) == int(alone[0])
    assert len(set(np.asarray(sample(jnp.tile(jnp.asarray(logits), (64, 1)),
                                     sample_keys(5, jnp.zeros(64, int), jnp.arange(64), 7), config, 100)))) > 10


@pytest.mark.parametrize("kwargs,field", [({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                          ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
                                          ({"min_p": 1.0}, "min_p"), ({"top_k": 2.5}, "top_k"),
                                          ({"temperature": float("inf")}, "temperature must be finite"),
                                          ({"temperature": float("nan")}, "temperature must be finite"),
                                          ({"top_p": float("nan")}, "top_p must be finite"),
                                          ({"min_p": -float("inf")}, "min_p must be finite"),
                                          ({"temperature": True}, "temperature must be a real number"),
                                          ({"top_p": "0.9"}, "top_p must be a real number"),
                                          ({"top_k": True}, "top_k must be an integer"),
                                          ({"top_k": np.float64(2)}, "top_k must be an integer")])
def test_invalid_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingConfig(**kwargs)


def test_numpy_numbers_are_stored_as_python_numbers():
    """np.int64 top_k used to be refused; numpy values now make the same (hash-equal: a static jit argument)
    config as the Python numbers."""
    config = SamplingConfig(temperature=np.float32(0.5), top_k=np.int64(5), top_p=np.float64(0.75), min_p=0)
    assert config == SamplingConfig(temperature=0.5, top_k=5, top_p=0.75, min_p=0.0)
    assert hash(config) == hash(SamplingConfig(temperature=0.5, top_k=5, top_p=0.75))
    assert [type(getattr(config, f)) for f in ("temperature", "top_k", "top_p", "min_p")] == [float, int, float,
                                                                                               float]


def test_flags_are_checked_by_sampling_config():
    """--temperature=inf passed both the flag's lower bound and SamplingConfig; the flags are now checked by
    SamplingConfig itself when parsed (one home for the rules)."""
    values = absl_flags.FlagValues()
    sampling_flags.define_flags(values)
    values(["prog", "--temperature=1.5", "--top_k=0"])
    assert sampling_flags.config_from_flags(values) == SamplingConfig(temperature=1.5, top_k=0)
    for argv, message in ((["--temperature=inf"], "SamplingConfig.temperature must be finite"),
                          (["--top_p=nan"], "SamplingConfig.top_p must be finite"),
                          (["--top_k=-1"], "SamplingConfig.top_k must be an integer >= 0"),
                          (["--temperature=-1"], "SamplingConfig.temperature must be >= 0")):
        values = absl_flags.FlagValues()
        sampling_flags.define_flags(values)
        with pytest.raises(absl_flags.IllegalFlagValueError, match=message):
            values(["prog"] + argv)


def test_keys_read_the_32_bits_of_seed_and_stream():
    """generate passes a uint32 seed / stream id as the int32 with the same bits (its program takes int32):
    the keys are those of the uint32 value, and of the plain int below 2**31."""
    rows = jnp.arange(3)
    for value in (5, 2**31 + 3, 2**32 - 1):
        bits = np.asarray(value, np.uint32).view(np.int32)
        ref = sample_keys(jnp.uint32(value), jnp.full(3, value, jnp.uint32), rows, 2)
        np.testing.assert_array_equal(jax.random.key_data(sample_keys(bits, jnp.full(3, bits), rows, 2)),
                                      jax.random.key_data(ref))
    old = sample_keys(5, jnp.full(3, 5, jnp.int32), rows, 2)  # a seed below 2**31 keeps its keys
    np.testing.assert_array_equal(jax.random.key_data(old), jax.random.key_data(
        sample_keys(jnp.uint32(5), jnp.full(3, 5, jnp.uint32), rows, 2)))


def test_only_top_p_or_min_p_without_top_k_sorts_the_vocabulary():
    """A full-vocabulary sort per row and step is what sampling cost most in a small model's decode step: it runs
    only where a filter needs the sorted order (top-p or min-p without top-k)."""
    logits, keys = jnp.zeros((4, 64)), sample_keys(0, jnp.zeros(4, jnp.int32), jnp.arange(4), 0)
    sorts = lambda config: re.search(r"\bsort\[", str(jax.make_jaxpr(lambda l, k: sample(l, k, config, 64))(
        logits, keys))) is not None
    assert not sorts(UNFILTERED) and not sorts(SamplingConfig(temperature=1.0, top_k=20, top_p=0.9))
    assert sorts(SamplingConfig(temperature=1.0, top_k=0, top_p=0.9))
    assert sorts(SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1))
