"""Token samplers as pure functions of (logits, config, keys).

Semantics follow transformers' logits warpers, applied in its order: temperature, then top-k (keep logits >= the
k-th largest), then top-p (keep the smallest set of most likely tokens whose probability reaches top_p), then
min-p (drop tokens whose probability is below min_p times the top probability). Ids at or above the real
vocabulary size (Qwen3 pads its embedding from ~151,669 to 151,936 rows) are never sampled. A temperature below
0.02 means greedy decoding, as in the Kinetics evaluation code.

With top-k on, the later filters and the draw run on the k best logits only (exactly equivalent: every other
token already has probability 0), so no full-vocabulary sort happens per step; with no filter at all (top_k 0,
top_p 1, min_p 0) the draw runs on the logits as they are, unsorted. Only top-p or min-p without top-k sorts the
vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from kinetics_jax.checks import checked_int

GREEDY_BELOW = 0.02  # temperatures below this decode greedily (Kinetics convention)


def checked_float(value: object, name: str) -> float:
    """`value` as a finite Python float, or ValueError naming `name`: any real number that is not a bool (int,
    float, numpy floats and integers) is taken; NaN and +-inf (which pass or dodge range checks), bools,
    strings and None are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}, a {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature >= 0 (< 0.02: greedy); top_k >= 0 (0: off); top_p in (0, 1] (1: off); min_p in [0, 1) (0: off).

    The floats must be finite real numbers (NaN and inf are refused) and are stored as float; top_k follows the
    package's integer rule (cache.checked_int: numpy integers taken and stored as int, bools and floats
    refused). This is the one place these rules live: the absl flags (sampling/flags.py) are checked by it.
    Defaults are the Kinetics evaluation settings: T = 0.6, top_p = 0.95, top_k = 20.
    """

    temperature: float = 0.6
    top_k: int = 20
    top_p: float = 0.95
    min_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p"):
            object.__setattr__(self, name, checked_float(getattr(self, name), f"SamplingConfig.{name}"))
        object.__setattr__(self, "top_k", checked_int(self.top_k, "SamplingConfig.top_k", minimum=0,
                                                      why="0 disables it"))
        if not self.temperature >= 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"SamplingConfig.min_p must be in [0, 1), got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @classmethod
    def greedy_config(cls) -> "SamplingConfig":
        return cls(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)


def _mask_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
    ids = jnp.arange(logits.shape[-1])
    return jnp.where(ids < vocab_size, logits, -jnp.inf)


def _filter_sorted(sorted_logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """top-p and min-p on logits sorted in descending order [..., n] -> same, with dropped entries at -inf."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = jnp.ones(sorted_logits.shape, bool)
    if config.top_p < 1.0:
        # Keep a token if the probability mass strictly before it is still below top_p (the first always stays).
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep &= mass_before < config.top_p
    if config.min_p > 0.0:
        keep &= probs >= config.min_p * probs[..., :1]
    return jnp.where(keep, sorted_logits, -jnp.inf)


def filtered_logits(logits: jax.Array, config: SamplingConfig, vocab_size: int) -> jax.Array:
    """The warped logits [B, V] the sampler draws from: kept entries are logits / T, dropped ones -inf.

    This is the full-vocabulary form of what `sample` does (used by tests and for inspection).
    """
    logits = _mask_vocab(logits.astype(jnp.float32), vocab_size) / max(config.temperature, GREEDY_BELOW)
    if config.top_k:
        kth = jax.lax.top_k(logits, min(config.top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    order = jnp.argsort(-logits, axis=-1, stable=True)
    kept_sorted = _filter_sorted(jnp.take_along_axis(logits, order, axis=-1), config)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(kept_sorted, inverse, axis=-1)


def sample(logits: jax.Array, keys: jax.Array, config: SamplingConfig, vocab_size: int) -> jax.Array:
    """Draws one token per row. logits: [B, V] (any float dtype); keys: [B] PRNG keys (one per row, so a row's
    draw does not depend on the batch); vocab_size: ids >= this are never drawn. Returns int32[B]."""
    logits = _mask_vocab(logits.astype(jnp.float32), vocab_size)
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / config.temperature
    if config.top_k:
        # top_k keeps ties with the k-th logit in the full-vocabulary form; with continuous logits ties have
        # probability zero, and lax.top_k then returns exactly the kept set.
        candidates, ids = jax.lax.top_k(logits, min(config.top_k, logits.shape[-1]))  # sorted descending
    elif config.top_p < 1.0 or config.min_p > 0.0:
        ids = jnp.argsort(-logits, axis=-1, stable=True)
        candidates = jnp.take_along_axis(logits, ids, axis=-1)
    else:  # nothing to filter: draw from the whole vocabulary as it is, without sorting it
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
    candidates = _filter_sorted(candidates, config)
    choice = jax.vmap(jax.random.categorical)(keys, candidates)
    return jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def sample_keys(seed: int, prompt_ids: jax.Array, sample_ids: jax.Array, step: jax.Array | int) -> jax.Array:
    """One PRNG key per row from (seed, prompt index, sample index, step): a sample's stream is independent of
    how many prompts or samples share its batch. prompt_ids, sample_ids: int[B]; step: one for every row, or
    int[B] (each row's own step). Returns keys [B].

    Only the 32 bits of the seed and of each id matter: a uint32 value passed as the int32 with the same bits
    (what generate does, its program takes int32) gives the same keys as the uint32 itself."""
    base = jax.random.key(seed)

    def one(p: jax.Array, s: jax.Array, t: jax.Array) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, p), s), t)

    return jax.vmap(one)(prompt_ids, sample_ids, jnp.broadcast_to(step, jnp.shape(prompt_ids)))
