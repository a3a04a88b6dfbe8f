"""best_of_n and long_cot are exactly generate() with the Kinetics settings."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import kinetics_jax as kj

CONFIG = kj.Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=8)
PROMPTS = [[1, 2, 3], [7, 7, 9, 30, 2]]


def test_best_of_n_is_n_shared_prompt_samples():
    model = kj.Qwen3ForCausalLM(CONFIG, rngs=nnx.Rngs(0))
    ours = kj.best_of_n(model, PROMPTS, 3, max_new_tokens=24, seed=4)
    ref = kj.generate(model, PROMPTS, num_samples=3, max_new_tokens=24, seed=4)
    assert ours.tokens.shape == (2, 3, 24)
    np.testing.assert_array_equal(ours.tokens, ref.tokens)
    np.testing.assert_array_equal(kj.best_of_n(model, PROMPTS, np.int64(3), max_new_tokens=24, seed=4).tokens,
                                  ref.tokens)  # a numpy n (e.g. from a sweep array) is the same n
    with pytest.raises(ValueError, match=r"best_of_n's n must be an integer >= 1, got 2.0, a float"):
        kj.best_of_n(model, PROMPTS, 2.0, max_new_tokens=24)


def test_long_cot_stops_loops_by_default():
    model = kj.Qwen3ForCausalLM(CONFIG, rngs=nnx.Rngs(1))  # weights whose greedy loops have a period dividing 64
    greedy = kj.SamplingConfig.greedy_config()
    cot = kj.long_cot(model, PROMPTS, max_new_tokens=1500, sampling=greedy)
    plain = kj.long_cot(model, PROMPTS, max_new_tokens=1500, sampling=greedy, repetition=None)
    assert cot.tokens.shape == (2, 1, 1500)
    assert (plain.finish_reasons == "length").all()
    assert "repetition" in cot.finish_reasons  # greedy decoding of a random model loops within 1500 tokens
    for p in range(2):
        assert cot.sequences(p, 0) == plain.sequences(p, 0)[:cot.lengths[p, 0]]
